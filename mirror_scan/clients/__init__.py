"""Clients of outside systems: rclone, S3 through rclone, Lemmy, pict-rs, PostgreSQL, HMA, ThreatExchange."""
