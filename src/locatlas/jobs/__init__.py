"""Shard-level jobs: the file-in, file-out layer between the CLI and the image functions.

Each job reads one shard's manifest, runs the stage's pure functions on every field
(in parallel, results in input order), writes its outputs, and writes its receipt
last and atomically: a job killed halfway leaves no receipt and is simply rerun.
"""
