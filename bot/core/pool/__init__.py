"""The worker pool on Redis ([workers] mode = "redis"): the wire format (protocol), the bot's dispatcher and the
worker process's job source. docs/scaling.md draws the picture."""
