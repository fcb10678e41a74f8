"""The message catalog: every user-facing string, by key and language."""

from __future__ import annotations

CATALOG: dict[str, dict[str, str]] = {
    "en": {
        "empty_prompt": "The prompt is empty.",
        "prompt_too_long": "The prompt is too long ({length} characters; the limit is {limit}).",
        "unknown_quality": "{model} has no quality {value!r}. Try one of: {options}.",
        "unknown_rating": "Unknown rating {value!r}. Use one of: {options}.",
        "unknown_year": "Year {value!r} is neither a year nor a period ({options}).",
        "year_out_of_range": "{model} knows years {low} to {high}, not {value}.",
        "bad_artist": "Artist names must be 1 to {limit} characters.",
        "unknown_model": "There is no model named {value!r}. Available: {options}.",
        "unknown_aspect": "Aspect {value!r} is not W:H (for example 13:19) nor a bucket of {model} ({options}).",
        "bad_size": "Size {value!r} must be WxH, each a multiple of {multiple} from {low} to {high}.",
        "aspect_and_size": "Give an aspect or a size, not both.",
        "out_of_range": "{name} must be from {low} to {high} (got {value}).",
        "unknown_sampler": "{model} has no sampler {value!r}. Available: {options}.",
        "quota_daily": "You have used {used} of your {limit} images for the last 24 hours ({remaining} left). "
        "More in {wait}.",
        "quota_queued": "You already have {limit} job(s) waiting. Wait for one to finish.",
        "quota_cooldown": "Please wait {wait} before your next request.",
        "job_not_found": "There is no job #{job_id}.",
        "not_your_job": "Job #{job_id} is not yours.",
        "job_finished": "Job #{job_id} has already finished.",
        "model_load_failed": "Could not load {model}: {reason}. {active} stays active.",
        "nsfw_not_allowed": "The rating {value!r} is only allowed in age-restricted channels. "
        "Nothing was queued.",
        "banned_word": "Your prompt contains a word that is not allowed here ({word!r}). Nothing was queued.",
        "queued": "#{job_id} queued (position {position}): {prompt}",
        "running": "#{job_id} generating with {model}…",
        "progress": "#{job_id} step {step}/{total}, about {eta}s left",
        "result": "#{job_id} {model} · seed {seed} · {width}x{height} · {steps} steps · cfg {cfg}",
        "result_for": "{mention} your images are ready. {summary}",
        "job_failed": "{mention} job #{job_id} failed: {error}",
        "job_cancelled": "{mention} job #{job_id} was cancelled.",
        "parameters": "Job #{job_id} ({model})\nPrompt: {prompt}\nNegative: {negative}\nSize: {width}x{height}"
        " · steps {steps} · cfg {cfg} · sampler {sampler} · seeds {seeds}",
        "rerolled": "Rerolling job #{job_id} as #{new_id} (position {position}).",
        "deleted": "Deleted.",
        "not_allowed": "Only the owner of job #{job_id} or an admin can do that.",
        "quota_status": "Images in the last 24 hours: {used} of {limit} ({remaining} left). {reset}"
        "Jobs waiting or running: {queued}.",
        "quota_reset": "The oldest counted image frees up <t:{at}:R>. ",
        "quota_unlimited": "unlimited",
        "history_empty": "You have no jobs yet.",
        "history_header": "Your jobs (page {page} of {pages}, {total} in all):",
        "history_line": "#{job_id} <t:{at}:f> · {state} · {model} · seed {seed} · {prompt}",
        "history_previous": "Previous",
        "history_next": "Next",
        "history_rerun": "Rerun a job (counts against your quota)",
        "history_rerun_option": "Rerun #{job_id}",
        "not_your_menu": "Only the person who opened this list can use it.",
        "queue_status": "Queue: {length} job(s) waiting.",
        "queue_is_paused": "The queue is paused: no new job starts.",
        "queue_yours": "Your jobs: {positions}.",
        "queue_your_position": "#{job_id} at position {position}",
        "queue_none_yours": "You have no jobs waiting.",
        "queue_running_step": "Running: #{job_id}, step {step}/{total}, about {eta}s left.",
        "queue_running_start": "Running: #{job_id} (starting).",
        "queue_idle": "Nothing is running.",
        "admin_only": "Only admins can do that. Nothing changed.",
        "queue_paused_now": "Queue paused. The running job finishes; no new job starts.",
        "queue_resumed_now": "Queue resumed.",
        "queue_cleared": "Cancelled {count} waiting job(s).",
        "queue_cancelled": "Job #{job_id} cancelled.",
        "queue_cancel_requested": "Job #{job_id} stops after its current step.",
        "queue_job_needed": "Give the id of the job to cancel.",
        "model_list_line": "{marker} {name} · {family} · {state}",
        "model_list_header": "Models ({active} is active here):",
        "model_info": "{name}\nFamily: {family} · prompt dialect: {dialect}\nWeights: {source}\nState: {state}\n"
        "Active here: {active}",
        "model_yes": "yes",
        "model_no": "no",
        "model_loading": "Loading {model}… (after the job running now)",
        "model_loading_stage": "Loading {model}: {stage} ({done}/{total})…",
        "model_switched": "{model} is now active (was {previous}).",
        "model_already_active": "{model} is already active.",
        "quota_set": "Quota of {user}: {limit} images per 24 hours.",
        "generic_error": "Something went wrong. The error was logged; please try again later.",
    },
}


def render(key: str, locale: str = "en", **params: object) -> str:
    table = CATALOG.get(locale) or CATALOG["en"]
    template = table.get(key) or CATALOG["en"][key]
    return template.format(**params)
