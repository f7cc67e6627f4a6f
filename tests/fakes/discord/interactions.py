"""Interactions with the fake Discord: slash commands, message menus, components and modals sent to the bot, and
the routes it answers them on (the interaction callback, and the webhook for @original and followups)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tests.fakes.discord.gateway import Gateway
from tests.fakes.discord.wire import FOLLOWUP_LIMIT, TOO_MANY_FOLLOWUPS, UNKNOWN_MESSAGE, Files, Recorded, Refused
from tests.fakes.discord.world import EPHEMERAL, LOADING


@dataclass
class Interaction:
    """One interaction the fake sent, and what the bot answered."""

    id: str
    token: str
    payload: dict[str, Any]
    callbacks: list[dict[str, Any]] = field(default_factory=list)  # the interaction responses, as received
    messages: list[dict[str, Any]] = field(default_factory=list)  # @original first (once it exists), then followups
    followups: list[dict[str, Any]] = field(default_factory=list)  # messages sent through the webhook
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    sent_at: float = field(default_factory=time.perf_counter)  # when the gateway event went out
    sent_to: list[tuple[int, int]] = field(default_factory=list)  # the shard of each session it went to
    first_answer_at: float | None = None  # when the bot's first callback arrived
    last_answer_at: float | None = None  # when the member last saw an answer (a message, not a "thinking" defer)
    told_at: float | None = None  # when the member first saw a message that is not "thinking"

    def saw_answer(self) -> None:
        self.last_answer_at = time.perf_counter()
        self.told_at = self.told_at or self.last_answer_at

    @property
    def responses(self) -> list[dict[str, Any]]:
        return self.callbacks

    @property
    def deferred(self) -> bool:
        return any(c["type"] in (5, 6) for c in self.callbacks)

    @property
    def modal(self) -> dict[str, Any] | None:
        return next((c["data"] for c in self.callbacks if c["type"] == 9), None)

    @property
    def original(self) -> dict[str, Any] | None:
        """The @original message, with every edit applied (None before it exists)."""
        return self.messages[0] if self.messages else None

    @property
    def content(self) -> str | None:
        return None if self.original is None else self.original["content"]

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return [] if self.original is None else self.original["embeds"]

    def texts(self) -> list[str]:
        return [m["content"] for m in self.messages]

    def ephemeral(self, index: int = -1) -> bool:
        """Whether message `index` (default: the latest) carries the ephemeral flag (64)."""
        return bool(self.messages[index]["flags"] & EPHEMERAL)

    async def wait_response(self, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Wait for the bot's first answer; returns the first callback (or the first followup if none)."""
        await asyncio.wait_for(self.answered.wait(), timeout)
        return self.callbacks[0] if self.callbacks else self.followups[0]


class Interactions(Gateway):
    """Every interaction sent to the bot, by id, with what the bot answered."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.interactions: dict[str, Interaction] = {}

    async def interact(
        self,
        kind: int,
        data: dict[str, Any],
        *,
        user: str,
        channel: str | None,
        message: dict[str, Any] | None = None,
        attachment_size_limit: int | None = None,
        dm: bool = False,
        elsewhere: bool = False,
        group_dm: bool = False,
    ) -> Interaction:
        """Send an interaction from `user` in `channel`; with `dm`, from their direct messages with the bot
        instead (no guild, no member); with `elsewhere`, through their user install in a server the bot is not in
        (`World.elsewhere`): only the user install authorizes it, and its follow-ups are capped; with `group_dm`,
        through it in a group DM of members (context 2), where the bot cannot post either."""
        if elsewhere:
            channel = self.elsewhere()
        channel_id = self.channel_id(channel) if channel else self.general
        guild_id = self.channels[channel_id]["guild_id"]
        permissions = self.permissions_of(user)
        payload: dict[str, Any] = {
            "id": self.snowflake(),
            "application_id": self.application_id,
            "type": kind,
            "data": data,
            "guild_id": guild_id,
            "guild": {"id": guild_id, "locale": self.preferred_locale, "features": []},
            "channel": self.channels[channel_id],
            "channel_id": channel_id,
            "member": {**self.member(user), "permissions": str(permissions)},
            "token": f"itoken-{self.snowflake()}",
            "version": 1,
            "app_permissions": str(self.bot_permissions_in(channel_id)),
            "locale": self.locales.get(user, "en-US"),
            "guild_locale": self.preferred_locale,
            "entitlements": [],
            "authorizing_integration_owners": {"0": guild_id},
            "context": 0,
            "attachment_size_limit": attachment_size_limit or self.filesize_limit,
        }
        if message is not None:
            payload["message"] = message
        if elsewhere:  # Discord names only the user install; the app's permissions are the channel's @everyone's
            payload["authorizing_integration_owners"] = {"1": self.users[user]["id"]}
            payload["app_permissions"] = self.roles[0]["permissions"]
        if dm:
            for key in ("guild_id", "guild", "member", "guild_locale"):
                del payload[key]
            dm_channel = next((c for c, u in self.dm_channels.items() if u == self.users[user]["id"]), None)
            if dm_channel is None:
                dm_channel = self.snowflake()
                self.dm_channels[dm_channel] = self.users[user]["id"]
                self.messages[dm_channel] = []
            payload |= {
                "user": self.users[user],
                "channel_id": dm_channel,
                "channel": {"id": dm_channel, "type": 1, "recipients": [self.users[user]], "flags": 0},
                "authorizing_integration_owners": {"1": self.users[user]["id"]},
                "context": 1,
            }
        if group_dm:
            for key in ("guild_id", "guild", "member", "guild_locale"):
                del payload[key]
            group = self.snowflake()
            self.group_dms.add(group)
            members = [self.users[user], *(u for name, u in self.users.items() if name != user)][:3]
            payload |= {
                "user": self.users[user],
                "channel_id": group,
                "channel": {"id": group, "type": 3, "recipients": members, "owner_id": members[0]["id"],
                            "name": None, "icon": None, "flags": 0},
                "authorizing_integration_owners": {"1": self.users[user]["id"]},
                "context": 2,
                "app_permissions": self.roles[0]["permissions"],
            }  # fmt: skip
        interaction = Interaction(payload["id"], payload["token"], payload)
        self.interactions[interaction.id] = interaction
        interaction.sent_to = await self.dispatch("INTERACTION_CREATE", payload)
        return interaction

    def _resolve(self, options: list[dict[str, Any]], resolved: dict[str, Any]) -> None:
        """Fill `data.resolved` for attachment, user, channel and role options (values given as ids)."""
        for option in options:
            kind, value = option["type"], option.get("value", "")
            if kind in (1, 2):
                self._resolve(option.get("options", []), resolved)
            elif kind == 11 and isinstance(value, dict):  # an attachment payload from add_attachment
                resolved.setdefault("attachments", {})[value["id"]] = value
                option["value"] = value["id"]
            elif kind == 6:
                name = next(n for n, u in self.users.items() if u["id"] == value)
                resolved.setdefault("users", {})[value] = self.users[name]
                member = {k: v for k, v in self.member(name).items() if k != "user"}
                resolved.setdefault("members", {})[value] = member | {"permissions": str(self.permissions_of(name))}
            elif kind == 7:
                resolved.setdefault("channels", {})[value] = {**self.channels[value], "permissions": "0"}
            elif kind == 8:
                resolved.setdefault("roles", {})[value] = next(r for r in self.roles if r["id"] == value)

    async def send_slash(
        self,
        name: str,
        options: Sequence[dict[str, Any]] = (),
        *,
        user: str = "alice",
        channel: str = "general",
        subcommand: str | None = None,
        attachments: Sequence[dict[str, Any]] = (),
        attachment_size_limit: int | None = None,
        dm: bool = False,
        elsewhere: bool = False,
        group_dm: bool = False,
    ) -> Interaction:
        """Run a chat-input command. `options` are Discord's option dicts ({"name", "type", "value"}); an
        attachment option (type 11) may carry the `add_attachment` payload as its value. `subcommand` may be
        "group sub". `attachments` are added to `data.resolved.attachments` as they are."""
        built = [dict(o) for o in options]
        resolved: dict[str, Any] = {}
        for attachment in attachments:
            resolved.setdefault("attachments", {})[attachment["id"]] = attachment
        self._resolve(built, resolved)
        if subcommand:  # "sub" or "group sub"
            *groups, sub = subcommand.split()
            built = [{"name": sub, "type": 1, "options": built}]
            for group in reversed(groups):
                built = [{"name": group, "type": 2, "options": built}]
        data: dict[str, Any] = {"id": self.snowflake(), "name": name, "type": 1}
        if not (
            dm or elsewhere or group_dm
        ):  # a guild command's id names its guild; a global (user install) one does not
            data["guild_id"] = self.channels[self.channel_id(channel)]["guild_id"]
        data["options"] = built
        if resolved:
            data["resolved"] = resolved
        return await self.interact(
            2, data, user=user, channel=channel, attachment_size_limit=attachment_size_limit, dm=dm,
            elsewhere=elsewhere, group_dm=group_dm,
        )  # fmt: skip

    async def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        sub: str | None = None,
        user: str = "alice",
        channel: str | None = None,
        attachment_size_limit: int | None = None,
        types: dict[str, int] | None = None,
        dm: bool = False,
        elsewhere: bool = False,
        group_dm: bool = False,
    ) -> Interaction:
        """`/name [sub] option:value ...` with option types guessed from the values: an attachment payload
        (from add_attachment), a user dict (from `users`), bool, int, float or str; `types` overrides."""
        built = []
        for key, value in (options or {}).items():
            if isinstance(value, dict) and "filename" in value:
                kind = 11
            elif isinstance(value, dict) and "username" in value:
                kind, value = 6, value["id"]
            elif key in (types or {}):
                kind = (types or {})[key]
            else:
                kind = {bool: 5, int: 4, float: 10}.get(type(value), 3)
            built.append({"name": key, "type": kind, "value": value})
        return await self.send_slash(
            name,
            built,
            user=user,
            channel=channel or self.general,
            subcommand=sub,
            attachment_size_limit=attachment_size_limit,
            dm=dm,
            elsewhere=elsewhere,
            group_dm=group_dm,
        )

    async def send_context_menu(
        self, name: str, message: str | dict[str, Any], *, user: str = "alice", channel: str | None = None
    ) -> Interaction:
        """Run a message command (data.type 3) on a message (its id, or its payload)."""
        target = self.find_message(message) if isinstance(message, str) else message
        resolved = {"messages": {target["id"]: self._public(target)}}
        data = {"id": self.snowflake(), "name": name, "type": 3, "target_id": target["id"], "resolved": resolved}
        return await self.interact(2, data, user=user, channel=channel or target["channel_id"])

    async def send_component(
        self,
        custom_id: str,
        message: str | dict[str, Any],
        *,
        user: str = "alice",
        channel: str | None = None,
        values: list[str] | None = None,
        dm: bool = False,
    ) -> Interaction:
        """Press a button (with `values`: choose in a string select) on a message (its id, or its payload)."""
        target = self.find_message(message) if isinstance(message, str) else message
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": 2 if values is None else 3}
        if values is not None:
            data["values"] = values
        channel = None if dm else channel or target["channel_id"]  # a DM interaction names its DM channel itself
        return await self.interact(3, data, user=user, channel=channel, message=self._public(target), dm=dm)

    message_menu = send_context_menu
    press = send_component

    async def send_modal_submit(
        self, custom_id: str, values: dict[str, Any], *, user: str = "alice", channel: str | None = None
    ) -> Interaction:
        """Submit a modal, `values` by field custom_id (a list for selects). If the bot showed this modal to
        `user`, the submission mirrors its layout (Label components, type 18, or action rows) and comes from
        the same channel; otherwise it holds text inputs in action rows."""
        shown = next(
            (
                i
                for i in reversed(self.interactions.values())
                if i.modal
                and i.modal["custom_id"] == custom_id
                and i.payload.get("member", i.payload)["user"] == self.users[user]
            ),
            None,
        )
        if shown is not None and shown.modal is not None:
            layout, channel = shown.modal["components"], channel or shown.payload["channel_id"]
        else:
            layout = [{"type": 1, "components": [{"type": 4, "custom_id": key}]} for key in values]
        answers = self._modal_answers(layout, lambda item: values.get(item["custom_id"]))
        return await self.interact(5, {"custom_id": custom_id, "components": answers}, user=user, channel=channel)

    async def submit_modal(self, shown: Interaction, values: dict[str, str], *, user: str = "alice") -> Interaction:
        """Fill the modal the bot showed, by field label, and submit it."""
        modal = shown.modal
        assert modal is not None, "the bot showed no modal"
        components = self._modal_answers(modal["components"], lambda item: values.get(item.get("label", "")))
        data = {"custom_id": modal["custom_id"], "components": components}
        if "guild_id" not in shown.payload:  # shown in the member's DM with the bot: sent from there
            return await self.interact(5, data, user=user, channel=None, dm=True)
        return await self.interact(5, data, user=user, channel=shown.payload["channel_id"])

    @staticmethod
    def _modal_answers(layout: list[dict[str, Any]], value_of: Callable[[dict[str, Any]], Any]) -> list[dict[str, Any]]:
        """What Discord sends back for a modal layout: rows and labels kept, each input with its value."""

        def answer(item: dict[str, Any], label: str | None) -> dict[str, Any]:
            value = value_of({**item, "label": label or item.get("label", "")})
            out: dict[str, Any] = {"type": item["type"], "custom_id": item["custom_id"]}
            if item["type"] == 4:
                out["value"] = value if value is not None else item.get("value") or ""
            else:  # selects and file uploads answer a list of values
                out["values"] = value or []
            return out

        answers = []
        for row in layout:
            if row["type"] == 1:
                answers.append({"type": 1, "components": [answer(c, None) for c in row["components"]]})
            elif row["type"] == 18:
                answers.append({"type": 18, "component": answer(row["component"], row.get("label"))})
        return answers

    # --- the routes the bot answers on -----------------------------------------------------------------------

    def _respond(self, interaction: Interaction, body: dict[str, Any], files: Files) -> dict[str, Any]:
        """A new interaction message; it shows in the channel unless ephemeral."""
        message = self._message(interaction.payload["channel_id"], body, files)
        message["interaction_metadata"] = {
            "id": interaction.id,
            "type": interaction.payload["type"],
            "user": interaction.payload["member"]["user"]
            if "member" in interaction.payload
            else interaction.payload["user"],
            "authorizing_integration_owners": interaction.payload["authorizing_integration_owners"],
        }
        interaction.messages.append(message)
        if not message["flags"] & EPHEMERAL and message["channel_id"] in self.messages:
            self.messages[message["channel_id"]].append(message)
        return message

    def _interaction_message(self, message_id: str) -> dict[str, Any] | None:
        """An interaction's own message (an ephemeral one is in no channel's list) by its id."""
        return next((m for i in self.interactions.values() for m in i.messages if m["id"] == message_id), None)

    async def _callback(self, call: Recorded, interaction_id: str, token: str) -> Any:
        interaction = self.interactions.get(interaction_id)
        if interaction is None or interaction.token != token:
            raise Refused(404, 10062, "Unknown interaction")
        if interaction.callbacks:
            raise Refused(400, 40060, "Interaction has already been acknowledged.")
        body, data = call.json, call.json.get("data") or {}
        self._check_upload(call.files, interaction.payload["attachment_size_limit"])
        interaction.callbacks.append(body)
        interaction.first_answer_at = time.perf_counter()
        if body["type"] not in (5, 6):
            interaction.saw_answer()
        response: dict[str, Any] = {"interaction": {"id": interaction_id, "type": interaction.payload["type"]}}
        message: dict[str, Any] | None = None
        if body["type"] == 4:  # a message
            message = self._respond(interaction, data, call.files)
        elif body["type"] == 5:  # "thinking": the loading message becomes @original
            message = self._respond(interaction, {"flags": (data.get("flags") or 0) | LOADING}, [])
        elif body["type"] == 7:  # update the message the component is on
            target = interaction.payload["message"]
            message = (
                self._find(target["channel_id"], target["id"]) or self._interaction_message(target["id"]) or target
            )
            self._edit(message, data, call.files)
            interaction.messages.append(message)
        if message is not None:
            response["interaction"].update(
                response_message_id=message["id"],
                response_message_loading=bool(message["flags"] & LOADING),
                response_message_ephemeral=bool(message["flags"] & EPHEMERAL),
            )
            response["resource"] = {"type": body["type"], "message": self._public(message)}
        interaction.answered.set()
        return response

    def _webhook_interaction(self, token: str) -> Interaction:
        found = next((i for i in self.interactions.values() if i.token == token), None)
        if found is None:
            raise Refused(404, 10015, "Unknown Webhook")
        return found

    async def _followup(self, call: Recorded, app_id: str, token: str) -> Any:
        interaction = self._webhook_interaction(token)
        body = call.json or {}
        self._check_upload(call.files, interaction.payload["attachment_size_limit"])
        only_user_install = "0" not in interaction.payload["authorizing_integration_owners"]
        if only_user_install and len(interaction.followups) >= FOLLOWUP_LIMIT:  # the first one after a defer counts
            raise Refused(*TOO_MANY_FOLLOWUPS)
        loading = next((m for m in interaction.messages if m["flags"] & LOADING), None)
        if loading is not None:  # the first followup after a defer replaces the loading message
            ephemeral = loading["flags"] & EPHEMERAL  # the defer decided; the followup's flag cannot change it
            loading.update(self._message(loading["channel_id"], body, call.files, message_id=loading["id"]))
            loading["flags"] = ((body.get("flags") or 0) & ~(LOADING | EPHEMERAL)) | ephemeral
            message = loading
        else:
            message = self._respond(interaction, body, call.files)
        interaction.followups.append(message)
        interaction.saw_answer()
        interaction.answered.set()
        return self._public(message)

    async def _webhook_message(self, call: Recorded, app_id: str, token: str, message_id: str) -> Any:
        """GET, PATCH or DELETE @original or a followup."""
        interaction = self._webhook_interaction(token)
        original = interaction.messages[:1] if message_id == "@original" else []
        message = next(iter(original or [m for m in interaction.messages if m["id"] == message_id]), None)
        if message is None:
            raise Refused(*UNKNOWN_MESSAGE)
        if call.method == "PATCH":
            self._check_upload(call.files, interaction.payload["attachment_size_limit"])
            self._edit(message, call.json or {}, call.files)
            interaction.saw_answer()
        elif call.method == "DELETE":
            interaction.messages.remove(message)
            if message in self.messages.get(message["channel_id"], []):
                self.messages[message["channel_id"]].remove(message)
            return None
        return self._public(message)

    ROUTES: ClassVar[list[tuple[str, str, Any]]] = [
        (r"/interactions/(\d+)/([^/]+)/callback", "POST", _callback),
        (r"/webhooks/(\d+)/([^/]+)", "POST", _followup),
        (r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", "GET", _webhook_message),
        (r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", "PATCH", _webhook_message),
        (r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", "DELETE", _webhook_message),
    ]
