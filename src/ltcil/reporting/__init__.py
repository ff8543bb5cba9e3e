"""Reporting: the JSONL event log, results.json and the printed summary."""
