"""The database schema, as numbered migrations. Applied in order at start; PRAGMA user_version
records how far a database has come. Never edit a released migration: add a new one."""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: users, jobs, images, deliveries, usage, quota overrides, guild settings, audit log, bot state
    """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,                 -- "discord:<snowflake>" or "cli:<name>"
        display_name TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );

    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        owner_id TEXT NOT NULL REFERENCES users(id),
        guild_id TEXT,                       -- NULL for DMs and the CLI
        channel_id TEXT,
        model TEXT NOT NULL,                 -- the model the job was submitted for; it keeps it
        request TEXT NOT NULL,               -- JSON: what the user asked for
        params TEXT NOT NULL,                -- JSON: the resolved parameters (final prompt, seeds, size...)
        image_count INTEGER NOT NULL CHECK (image_count > 0),
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
        error TEXT,                          -- for failed jobs: a message a user can read
        attempts INTEGER NOT NULL DEFAULT 0, -- times a worker started it (a crash leaves it to retry)
        reroll_of INTEGER REFERENCES jobs(id),
        cancelled_by TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX jobs_by_state ON jobs (state, id);
    CREATE INDEX jobs_by_owner ON jobs (owner_id, id DESC);

    CREATE TABLE images (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        seed INTEGER NOT NULL,
        path TEXT NOT NULL,                  -- relative to the data directory
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        parameters TEXT NOT NULL,            -- the A1111 parameters text written into the PNG
        PRIMARY KEY (job_id, idx)
    );

    CREATE TABLE deliveries (
        job_id INTEGER PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
        delivered_at REAL NOT NULL,
        target TEXT NOT NULL DEFAULT ''      -- where it went (frontend-specific, e.g. a message id)
    );

    CREATE TABLE usage (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id TEXT NOT NULL REFERENCES users(id),
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        images INTEGER NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX usage_by_user ON usage (user_id, at);

    CREATE TABLE quota_overrides (
        scope TEXT NOT NULL CHECK (scope IN ('user', 'role')),
        target_id TEXT NOT NULL,
        images_per_day INTEGER,              -- NULL: the configured default
        max_queued INTEGER,
        cooldown_seconds REAL,
        set_by TEXT NOT NULL,
        set_at REAL NOT NULL,
        PRIMARY KEY (scope, target_id)
    );

    CREATE TABLE guild_settings (
        guild_id TEXT PRIMARY KEY,           -- '*' holds the global default
        active_model TEXT NOT NULL,
        updated_at REAL NOT NULL
    );

    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        actor_id TEXT NOT NULL,
        guild_id TEXT,
        action TEXT NOT NULL,
        detail TEXT NOT NULL                 -- JSON
    );

    CREATE TABLE bot_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: the language of the user who asked, so a result delivered after a restart speaks it
    """
    ALTER TABLE jobs ADD COLUMN locale TEXT;  -- catalog language ("en", "ja"); NULL: none known (the CLI)
    """,
    # 3: the queue's whole state in the database (fair order's served counts, who claimed a job), and the
    # content policy's verdict stored with each job (delivery and rerolls read it, never re-decide)
    """
    ALTER TABLE jobs ADD COLUMN verdict TEXT;     -- JSON of bot.prompts.policy's verdict; NULL: before v3
    ALTER TABLE jobs ADD COLUMN claimed_by TEXT;  -- the worker running it (NULL while queued)
    CREATE TABLE queue_served (
        owner_id TEXT PRIMARY KEY REFERENCES users(id),
        served INTEGER NOT NULL DEFAULT 0     -- jobs started since the owner's waiting list was last empty
    );
    CREATE INDEX jobs_waiting_by_owner ON jobs (owner_id, id) WHERE state = 'queued';
    """,
    # 4: each waiting job's fair rank, kept by the queue repository (bot/core/jobs.py: served count + place among
    # the owner's waiting jobs), so the next job and every position are one index walk, never a sort of the queue
    """
    ALTER TABLE jobs ADD COLUMN queue_rank INTEGER;  -- while queued: its rank in the fair order; else unused
    UPDATE jobs SET queue_rank = ranked.rank
    FROM (
        SELECT j.id, COALESCE(s.served, 0) + ROW_NUMBER() OVER (PARTITION BY j.owner_id ORDER BY j.id) - 1 AS rank
        FROM jobs j LEFT JOIN queue_served s ON s.owner_id = j.owner_id
        WHERE j.state = 'queued'
    ) AS ranked
    WHERE jobs.id = ranked.id;
    CREATE INDEX jobs_waiting_in_order ON jobs (queue_rank, id) WHERE state = 'queued';
    """,
    # 5: the rating check of results (bot/discord_app/screening.py): each image's rating by the tagger, and
    # why a job's result was withheld from its channel
    """
    ALTER TABLE images ADD COLUMN rating TEXT;        -- general | sensitive | questionable | explicit; NULL: not rated
    ALTER TABLE images ADD COLUMN rating_score REAL;  -- the tagger's score of that rating (0..1)
    ALTER TABLE jobs ADD COLUMN withheld TEXT;        -- NULL: posted (or not yet); else the rating, or 'unchecked'
    """,
    # 6: each server's own rating-check settings (/safety; bot/core/safety_settings.py): NULL columns follow
    # the config's [safety]; a looser choice than the config's applies only where [safety] servers_may_loosen
    """
    CREATE TABLE guild_safety (
        guild_id TEXT PRIMARY KEY,
        sensitive TEXT CHECK (sensitive IN ('spoiler', 'withhold', 'post')),  -- NULL: [safety] sensitive
        rate_results INTEGER CHECK (rate_results IN (0, 1)),                  -- NULL: [safety] rate_results
        updated_by TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX jobs_withheld_by_guild ON jobs (guild_id, id DESC) WHERE withheld IS NOT NULL;
    """,
    # 7: the worker pool's dispatch token, the secret a running job was handed to its worker with (bot/core/pool):
    # only a result carrying it completes the job
    """
    ALTER TABLE jobs ADD COLUMN dispatch_token TEXT;  -- while running on a pool worker: its dispatch's token
    """,
    # 8: creative tools (issue 12): a job made from another one's image (vary, upscale) names its parent, and every
    # job says what kind it is (txt2img, img2img from an upload, vary, upscale), for /history and the lineage
    """
    ALTER TABLE jobs ADD COLUMN parent_id INTEGER REFERENCES jobs(id);  -- vary/upscale: the job whose image it used
    ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'txt2img'
        CHECK (kind IN ('txt2img', 'img2img', 'vary', 'upscale'));
    CREATE INDEX jobs_by_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
    """,
)
