"""Worked solutions to week 2's exercises: one markdown file per exercise, and two small
runnable modules (`ex2_burstiness`, `ex5_block_size`) that need no server."""
