"""The parts of the fake Discord, one per thing it fakes; tests/fake_discord.py assembles them into `FakeDiscord`."""
