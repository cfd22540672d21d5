"""Example relay plugins: ``relay_jsonl.sink`` writes events to a file, ``relay_jsonl.source`` tails one."""
