"""Benchmarks made by the project's own commands: the leaderboard, data efficiency, speed."""
