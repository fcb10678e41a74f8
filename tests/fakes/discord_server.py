"""A loopback Discord for wire-level tests: the v10 REST API and the gateway websocket, served by aiohttp on
127.0.0.1. It records every REST request (JSON bodies and multipart uploads), keeps the messages it
creates, answers the way Discord does (status codes, error codes, message objects, rate-limit headers),
and lets a test dispatch gateway events such as INTERACTION_CREATE to the connected client.

Point a client at it with `base_url` (REST) and `gateway_url` (websocket). The fake knows one guild with
one text channel; members are added with `add_member`, interactions built with `slash` and `click`."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import importlib
import json
import re
import secrets
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

import yarl
from aiohttp import BodyPartReader, WSMsgType, web

Json = dict[str, Any]

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
HEARTBEAT_INTERVAL_MS = 41_250
ZLIB_SUFFIX = b"\x00\x00\xff\xff"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024
# create invite, add reactions, view channel, send messages, embed links, attach files, read history,
# external emojis, use application commands: roughly what @everyone has in a new server.
EVERYONE_PERMISSIONS = sum(1 << bit for bit in (0, 6, 10, 11, 14, 15, 16, 18, 31))
# GATEWAY_MESSAGE_CONTENT_LIMITED | APPLICATION_COMMAND_BADGE
APPLICATION_FLAGS = (1 << 19) | (1 << 23)
# Message flags a sender may set, and Discord's own LOADING flag for deferred responses.
EPHEMERAL, LOADING, SETTABLE_FLAGS = 1 << 6, 1 << 7, (1 << 2) | (1 << 6) | (1 << 12) | (1 << 15)


class Op(IntEnum):
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    RESUME = 6
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class Callback(IntEnum):
    """Interaction callback (response) types."""

    PONG = 1
    CHANNEL_MESSAGE = 4
    DEFERRED_CHANNEL_MESSAGE = 5
    DEFERRED_UPDATE_MESSAGE = 6
    UPDATE_MESSAGE = 7
    AUTOCOMPLETE_RESULT = 8
    MODAL = 9


class MessageType(IntEnum):
    DEFAULT = 0
    REPLY = 19
    CHAT_INPUT_COMMAND = 20


OPTION_TYPES: dict[int, Callable[[Any], Any]] = {3: str, 4: int, 5: bool, 10: float}


@dataclass(frozen=True)
class Upload:
    """One file part (`files[n]`) of a multipart request."""

    field: str
    filename: str
    content_type: str
    data: bytes

    @property
    def index(self) -> int:
        match = re.fullmatch(r"files\[(\d+)\]", self.field)
        if match is None:
            raise ValueError(f"not a file field: {self.field}")
        return int(match[1])


@dataclass
class RecordedRequest:
    """A REST request as the fake received it, and the status it answered."""

    method: str
    path: str  # below /api/v10, decoded: "/webhooks/1/abc/messages/@original"
    query: dict[str, str]
    headers: dict[str, str]
    content_type: str
    json: Any  # the JSON body, or the `payload_json` part of a multipart body; None without a body
    files: list[Upload]
    status: int = 0
    response: Any = None


def stream_compressor(kind: str | None) -> Callable[[bytes], bytes] | None:
    """One compression context for a connection's `compress` query: each call returns one complete frame.
    zlib-stream frames end in the Z_SYNC_FLUSH suffix; zstd-stream (which discord.py asks for when
    `compression.zstd` (Python 3.14+) or `zstandard` is importable) flushes a block per frame."""
    if kind is None:
        return None
    if kind == "zlib-stream":
        zlib_stream = zlib.compressobj()

        def zlib_frame(data: bytes) -> bytes:
            frame = zlib_stream.compress(data) + zlib_stream.flush(zlib.Z_SYNC_FLUSH)
            assert frame.endswith(ZLIB_SUFFIX)
            return frame

        return zlib_frame
    if kind == "zstd-stream":
        try:
            zstd: Any = importlib.import_module("compression.zstd")
        except ImportError:
            zstandard: Any = importlib.import_module("zstandard")
            zstandard_stream = zstandard.ZstdCompressor().compressobj()
            return lambda data: (
                zstandard_stream.compress(data) + zstandard_stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            )
        zstd_stream = zstd.ZstdCompressor()
        return lambda data: bytes(zstd_stream.compress(data, mode=zstd.ZstdCompressor.FLUSH_BLOCK))
    raise ValueError(f"unsupported gateway compression: {kind}")


@dataclass
class GatewaySession:
    """One client connection to the gateway."""

    ws: web.WebSocketResponse
    query: dict[str, str]
    id: str = field(default_factory=lambda: secrets.token_hex(16))
    identify: Json | None = None
    heartbeats: int = 0
    sequence: int = 0
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _compress: Callable[[bytes], bytes] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self._compress = stream_compressor(self.query.get("compress"))

    async def send(self, op: Op, data: Any = None, event: str | None = None) -> None:
        """Send one gateway payload: a compressed binary frame when the client asked for a stream, else text."""
        async with self._lock:
            seq = None
            if op == Op.DISPATCH:
                self.sequence += 1
                seq = self.sequence
            text = json.dumps({"op": int(op), "d": data, "s": seq, "t": event}, separators=(",", ":"))
            if self._compress is None:
                await self.ws.send_str(text)
            else:
                await self.ws.send_bytes(self._compress(text.encode()))


@dataclass
class InteractionRecord:
    """An interaction the fake created, and what the client did with it."""

    payload: Json
    callback_type: int | None = None
    original_id: int | None = None  # the message the callback created or updated

    @property
    def id(self) -> int:
        return int(self.payload["id"])

    @property
    def token(self) -> str:
        return str(self.payload["token"])


class DiscordError(Exception):
    """Answer the request with Discord's JSON error body."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


Handler = Callable[[RecordedRequest, dict[str, str]], Awaitable[Any]]


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    bot_auth: bool  # needs "Authorization: Bot <token>"; webhook/interaction routes are authorized by token


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 24:
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


class FakeDiscord:
    """The fake: `await start()`, point the client at `base_url`/`gateway_url`, `await close()`."""

    def __init__(self, token: str = "fake.bot.token") -> None:
        self.token = token
        self._counter = 0
        self.application_id = self.snowflake()
        self.bot_user = self._user(self.application_id, "animebot", bot=True)
        self.owner = self._user(self.snowflake(), "owner")
        self.guild_id = self.snowflake()
        self.channel_id = self.snowflake()
        self.bot_role_id = self.snowflake()
        self.members: dict[int, Json] = {}
        self.requests: list[RecordedRequest] = []
        self.sessions: list[GatewaySession] = []
        self.commands: dict[int | None, list[Json]] = {}  # None: global; else per guild
        self.messages: dict[int, Json] = {}
        self.attachments: dict[int, bytes] = {}
        self.interactions: dict[int, InteractionRecord] = {}
        self._changed = asyncio.Condition()
        self._routes = self._route_table()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.add_member(self.bot_user, roles=[self.bot_role_id])

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=ATTACHMENT_SIZE_LIMIT * 2)
        app.router.add_get("/", self._gateway)
        app.router.add_get("/attachments/{channel}/{attachment}/{filename}", self._cdn)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        for session in self.sessions:
            if not session.ws.closed:
                await session.ws.close(code=1001, message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The REST base, as discord.http.Route.BASE."""
        return self.url + API_PREFIX

    @property
    def gateway_url(self) -> yarl.URL:
        """The gateway, as discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY."""
        return yarl.URL(f"ws://127.0.0.1:{self.port}/")

    # -- ids and objects -------------------------------------------------------------------------------

    def snowflake(self) -> int:
        """A unique snowflake of the current time (clients derive created_at from it)."""
        self._counter += 1
        return ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) + self._counter

    @staticmethod
    def _user(user_id: int, name: str, *, bot: bool = False) -> Json:
        user: Json = {
            "id": str(user_id),
            "username": name,
            "global_name": None if bot else name.title(),
            "discriminator": "0",
            "avatar": None,
            "avatar_decoration_data": None,
            "public_flags": 0,
            "primary_guild": None,
            "collectibles": None,
        }
        if bot:
            user.update(bot=True, verified=True, mfa_enabled=False, flags=0, email=None, locale="en-US")
        return user

    def add_member(self, user: Json | str, *, roles: list[int] | None = None) -> Json:
        """A guild member (a new user when given a name); returns the member object."""
        if isinstance(user, str):
            user = self._user(self.snowflake(), user)
        member: Json = {
            "user": user,
            "roles": [str(r) for r in roles or []],
            "nick": None,
            "avatar": None,
            "banner": None,
            "premium_since": None,
            "joined_at": now_iso(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
            "unusual_dm_activity_until": None,
        }
        self.members[int(user["id"])] = member
        return member

    def channel(self) -> Json:
        return {
            "id": str(self.channel_id),
            "type": 0,
            "guild_id": str(self.guild_id),
            "name": "general",
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
            "flags": 0,
        }

    def guild(self) -> Json:
        """The GUILD_CREATE payload: the guild with its channels, roles and the bot's own member."""
        channel = self.channel()
        del channel["guild_id"]  # channels in GUILD_CREATE carry no guild_id
        everyone = {
            "id": str(self.guild_id),
            "name": "@everyone",
            "permissions": str(EVERYONE_PERMISSIONS),
            "position": 0,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }
        bot_role = {
            **everyone,
            "id": str(self.bot_role_id),
            "name": "animebot",
            "position": 1,
            "managed": True,
            "permissions": str(EVERYONE_PERMISSIONS),
            "tags": {"bot_id": str(self.application_id)},
        }
        return {
            "id": str(self.guild_id),
            "name": "Wire Test Server",
            "icon": None,
            "banner": None,
            "splash": None,
            "discovery_splash": None,
            "description": None,
            "owner_id": self.owner["id"],
            "application_id": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "system_channel_id": str(self.channel_id),
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": "en-US",
            "features": [],
            "vanity_url_code": None,
            "max_members": 500000,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "widget_enabled": False,
            "incidents_data": None,
            "roles": [everyone, bot_role],
            "emojis": [],
            "stickers": [],
            "joined_at": now_iso(),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "members": [self.members[self.application_id]],  # without the members intent: only the bot
            "channels": [channel],
            "threads": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "embedded_activities": [],
            "lazy": True,
        }

    # -- interactions ----------------------------------------------------------------------------------

    def command(self, name: str) -> tuple[Json, int | None]:
        """A registered command and its guild (None: global). Discord only sends registered commands."""
        for scope in (self.guild_id, None):
            for command in self.commands.get(scope, []):
                if command["name"] == name:
                    return command, scope
        raise LookupError(f"command {name!r} was never registered")

    def _interaction(self, kind: int, member: Json, data: Json, locale: str, **extra: Any) -> Json:
        interaction_id = self.snowflake()
        payload: Json = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "guild": {"id": str(self.guild_id), "locale": "en-US", "features": []},
            "guild_id": str(self.guild_id),
            "guild_locale": "en-US",
            "channel": self.channel(),
            "channel_id": str(self.channel_id),
            "member": {**member, "permissions": str(EVERYONE_PERMISSIONS)},
            "token": "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48),
            "version": 1,
            "locale": locale,
            "app_permissions": str(EVERYONE_PERMISSIONS),
            "entitlement_sku_ids": [],
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_id)},
            "context": 0,
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
            **extra,
        }
        self.interactions[interaction_id] = InteractionRecord(payload)
        return payload

    def slash(self, name: str, member: Json, *, locale: str = "en-US", **options: Any) -> Json:
        """An INTERACTION_CREATE payload for a chat-input command, typed by the registered options."""
        command, scope = self.command(name)
        types = {o["name"]: int(o["type"]) for o in command.get("options", [])}
        data: Json = {
            "id": command["id"],
            "name": name,
            "type": 1,
            "options": [
                {"name": key, "type": types[key], "value": OPTION_TYPES[types[key]](value)}
                for key, value in options.items()
            ],
        }
        if scope is not None:
            data["guild_id"] = str(scope)
        return self._interaction(2, member, data, locale)

    def click(
        self, message_id: int, custom_id: str, member: Json, *, locale: str = "en-US", forged: bool = False
    ) -> Json:
        """An INTERACTION_CREATE payload for a button press on a message the fake holds. Discord only sends
        custom_ids the message has; `forged` builds one with any custom_id (a hostile client, or a gap in
        Discord's checks) to test that the bot does not trust it."""
        message = self.messages[message_id]
        button = next((c for c in _walk(message["components"]) if c.get("custom_id") == custom_id), None)
        if button is None and forged:
            button = {"type": 2, "id": 1}
        if button is None:
            raise LookupError(f"message {message_id} has no component {custom_id!r}")
        data = {"component_type": button["type"], "custom_id": custom_id, "id": button["id"]}
        return self._interaction(3, member, data, locale, message=copy.deepcopy(message))

    async def dispatch(self, event: str, data: Json) -> None:
        """Send a DISPATCH to the client identified last."""
        session = next((s for s in reversed(self.sessions) if s.identify is not None and not s.ws.closed), None)
        if session is None:
            raise RuntimeError("no identified gateway session")
        await session.send(Op.DISPATCH, data, event)

    # -- waiting ---------------------------------------------------------------------------------------

    async def wait_for_request(
        self, predicate: Callable[[RecordedRequest], bool], *, timeout: float = 30.0
    ) -> RecordedRequest:
        """The first recorded (answered) request that matches, waiting for it if need be."""

        def found() -> RecordedRequest | None:
            return next((r for r in self.requests if r.status and predicate(r)), None)

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None), timeout)
        except TimeoutError:
            seen = [f"{r.method} {r.path} -> {r.status}" for r in self.requests]
            raise AssertionError(f"no matching request within {timeout}s; received: {seen}") from None
        result = found()
        assert result is not None
        return result

    def find(self, method: str, path: str) -> list[RecordedRequest]:
        """Requests by method and a regex that must match the whole path."""
        return [r for r in self.requests if r.method == method and re.fullmatch(path, r.path)]

    # -- gateway ---------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session = GatewaySession(ws, dict(request.query))
        self.sessions.append(session)
        try:
            await session.send(Op.HELLO, {"heartbeat_interval": HEARTBEAT_INTERVAL_MS, "_trace": ["fake-gateway"]})
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    break
                await self._gateway_receive(session, json.loads(message.data))
        finally:
            session.close_code = ws.close_code
            session.closed.set()
            async with self._changed:
                self._changed.notify_all()
        return ws

    async def _gateway_receive(self, session: GatewaySession, payload: Json) -> None:
        op = payload.get("op")
        if op == Op.HEARTBEAT:
            session.heartbeats += 1
            await session.send(Op.HEARTBEAT_ACK)
        elif op == Op.IDENTIFY:
            if session.identify is not None:
                await session.ws.close(code=4005, message=b"Already authenticated.")
                return
            if payload["d"].get("token") != self.token:
                await session.ws.close(code=4004, message=b"Authentication failed.")
                return
            session.identify = payload["d"]
            await session.send(Op.DISPATCH, self._ready(session), "READY")
            await session.send(Op.DISPATCH, self.guild(), "GUILD_CREATE")
        elif op == Op.RESUME:
            await session.send(Op.INVALID_SESSION, False)  # sessions are not kept: identify again

    def _ready(self, session: GatewaySession) -> Json:
        return {
            "v": 10,
            "user": self.bot_user,
            "user_settings": {},
            "session_type": "normal",
            "session_id": session.id,
            "resume_gateway_url": str(self.gateway_url),
            "guilds": [{"id": str(self.guild_id), "unavailable": True}],
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["local"],
            "auth": {},
            "application": {"id": str(self.application_id), "flags": APPLICATION_FLAGS},
            "_trace": ["fake-gateway"],
            # As Discord: a session identified as a shard is told which (AutoShardedClient reads it).
            **({"shard": session.identify["shard"]} if session.identify and "shard" in session.identify else {}),
        }

    # -- REST ------------------------------------------------------------------------------------------

    def _route_table(self) -> list[_Route]:
        app = r"/applications/(?P<app>\d+)"
        hook = r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)"
        table: list[tuple[str, str, Handler, bool]] = [
            ("GET", r"/users/@me", self._get_me, True),
            ("GET", r"/oauth2/applications/@me", self._get_application, True),
            ("GET", r"/gateway", self._get_gateway, False),
            ("GET", r"/gateway/bot", self._get_gateway, True),
            ("PUT", app + r"/commands", self._put_commands, True),
            ("GET", app + r"/commands", self._get_commands, True),
            ("PUT", app + r"/guilds/(?P<guild>\d+)/commands", self._put_commands, True),
            ("GET", app + r"/guilds/(?P<guild>\d+)/commands", self._get_commands, True),
            ("POST", r"/interactions/(?P<id>\d+)/(?P<token>[^/]+)/callback", self._callback, False),
            ("POST", hook, self._followup, False),
            ("GET", hook + r"/messages/(?P<message>@original|\d+)", self._get_webhook_message, False),
            ("PATCH", hook + r"/messages/(?P<message>@original|\d+)", self._edit_webhook_message, False),
            ("DELETE", hook + r"/messages/(?P<message>@original|\d+)", self._delete_webhook_message, False),
            ("GET", r"/channels/(?P<channel>\d+)", self._get_channel, True),
            ("POST", r"/channels/(?P<channel>\d+)/messages", self._post_message, True),
            ("GET", r"/channels/(?P<channel>\d+)/messages/(?P<message>\d+)", self._get_message, True),
            ("PATCH", r"/channels/(?P<channel>\d+)/messages/(?P<message>\d+)", self._edit_message, True),
            ("DELETE", r"/channels/(?P<channel>\d+)/messages/(?P<message>\d+)", self._delete_message, True),
        ]
        return [_Route(method, re.compile(pattern), handler, auth) for method, pattern, handler, auth in table]

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        body, files = await _read_body(request)
        recorded = RecordedRequest(
            method=request.method,
            path=path,
            query=dict(request.query),
            headers=dict(request.headers),
            content_type=request.content_type,
            json=body,
            files=files,
        )
        self.requests.append(recorded)
        status, payload = await self._answer(recorded)
        recorded.status, recorded.response = status, payload
        async with self._changed:
            self._changed.notify_all()
        headers = _rate_limit_headers(request.method, path)
        if payload is None:
            return web.Response(status=status, headers=headers)
        # Exactly "application/json", no charset: discord.py only decodes JSON for that header value.
        headers["Content-Type"] = "application/json"
        return web.Response(status=status, body=json.dumps(payload).encode(), headers=headers)

    async def _answer(self, request: RecordedRequest) -> tuple[int, Any]:
        methods = False
        for route in self._routes:
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            methods = True
            if route.method != request.method:
                continue
            if route.bot_auth and request.headers.get("Authorization") != f"Bot {self.token}":
                return 401, {"message": "401: Unauthorized", "code": 0}
            try:
                result = await route.handler(request, match.groupdict())
            except DiscordError as error:
                return error.status, {"message": error.message, "code": error.code}
            if result is None:
                return 204, None
            return 200, result
        if methods:
            return 405, {"message": "405: Method Not Allowed", "code": 0}
        return 404, {"message": "404: Not Found", "code": 0}

    async def _get_me(self, request: RecordedRequest, params: dict[str, str]) -> Json:
        return self.bot_user

    async def _get_application(self, request: RecordedRequest, params: dict[str, str]) -> Json:
        return {
            "id": str(self.application_id),
            "name": "animebot",
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": secrets.token_hex(32),
            "flags": APPLICATION_FLAGS,
            "owner": self.owner,
            "team": None,
            "bot": self.bot_user,
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "role_connections_verification_url": None,
            "tags": [],
            "approximate_guild_count": 1,
            "integration_types_config": {"0": {}},
        }

    async def _get_gateway(self, request: RecordedRequest, params: dict[str, str]) -> Json:
        url = str(self.gateway_url).rstrip("/")
        if request.path == "/gateway":
            return {"url": url}
        limit = {"total": 1000, "remaining": 999, "reset_after": 86_400_000, "max_concurrency": 1}
        return {"url": url, "shards": 1, "session_start_limit": limit}

    # commands

    def _scope(self, params: dict[str, str]) -> int | None:
        if int(params["app"]) != self.application_id:
            raise DiscordError(403, 50001, "Missing Access")
        guild = params.get("guild")
        if guild is not None and int(guild) != self.guild_id:
            raise DiscordError(403, 50001, "Missing Access")
        return None if guild is None else int(guild)

    async def _put_commands(self, request: RecordedRequest, params: dict[str, str]) -> list[Json]:
        scope = self._scope(params)
        if not isinstance(request.json, list):
            raise DiscordError(400, 50035, "Invalid Form Body")
        previous = {c["name"]: c for c in self.commands.get(scope, [])}
        registered = []
        for command in request.json:
            old = previous.get(command["name"])
            registered.append(
                {
                    "type": 1,
                    "options": [],
                    "default_member_permissions": None,
                    "nsfw": False,
                    "contexts": None,
                    "integration_types": [0],
                    "name_localizations": None,
                    "description_localizations": None,
                    **command,
                    "id": old["id"] if old else str(self.snowflake()),
                    "application_id": str(self.application_id),
                    "version": str(self.snowflake()),
                    **({"guild_id": str(scope)} if scope is not None else {}),
                }
            )
        self.commands[scope] = registered
        return registered

    async def _get_commands(self, request: RecordedRequest, params: dict[str, str]) -> list[Json]:
        return self.commands.get(self._scope(params), [])

    # interactions

    def _record(self, interaction_id: int, token: str) -> InteractionRecord:
        record = self.interactions.get(interaction_id)
        if record is None or record.token != token:
            raise DiscordError(404, 10062, "Unknown interaction")
        return record

    def _record_by_token(self, params: dict[str, str]) -> InteractionRecord:
        record = next((r for r in self.interactions.values() if r.token == params["token"]), None)
        if record is None or int(params["app"]) != self.application_id:
            raise DiscordError(404, 10015, "Unknown Webhook")
        return record

    async def _callback(self, request: RecordedRequest, params: dict[str, str]) -> Json | None:
        record = self._record(int(params["id"]), params["token"])
        if record.callback_type is not None:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        body = request.json if isinstance(request.json, dict) else {}
        kind, data = body.get("type"), body.get("data") or {}
        interacted = record.payload.get("message")
        message: Json | None = None
        if kind == Callback.CHANNEL_MESSAGE:
            message = self._interaction_message(record, data, request.files)
        elif kind == Callback.DEFERRED_CHANNEL_MESSAGE:
            message = self._interaction_message(record, {"flags": data.get("flags", 0)}, [], loading=True)
        elif kind in (Callback.DEFERRED_UPDATE_MESSAGE, Callback.UPDATE_MESSAGE) and interacted is not None:
            message = self.messages[int(interacted["id"])]
            if kind == Callback.UPDATE_MESSAGE:
                self._apply_edit(message, data, request.files)
        elif kind not in (Callback.AUTOCOMPLETE_RESULT, Callback.MODAL):
            raise DiscordError(400, 50035, "Invalid Form Body")
        record.callback_type = kind
        record.original_id = int(message["id"]) if message is not None else None
        if request.query.get("with_response") not in ("1", "true", "True"):
            return None
        response: Json = {
            "interaction": {
                "id": str(record.id),
                "type": record.payload["type"],
                "response_message_loading": kind == Callback.DEFERRED_CHANNEL_MESSAGE,
                "response_message_ephemeral": bool(message and message["flags"] & EPHEMERAL),
            }
        }
        if message is not None:
            response["interaction"]["response_message_id"] = message["id"]
            response["resource"] = {"type": kind, "message": message}
        return response

    def _interaction_message(self, record: InteractionRecord, data: Json, files: list[Upload], **kw: Any) -> Json:
        payload = record.payload
        user = payload["member"]["user"]
        metadata: Json = {
            "id": str(record.id),
            "type": payload["type"],
            "user": user,
            "authorizing_integration_owners": payload["authorizing_integration_owners"],
        }
        extra: Json = {"webhook_id": str(self.application_id), "application_id": str(self.application_id)}
        if payload["type"] == 2:
            kind = MessageType.CHAT_INPUT_COMMAND
            metadata.update(name=payload["data"]["name"], command_type=1)
            extra["interaction"] = {"id": str(record.id), "type": 2, "name": payload["data"]["name"], "user": user}
        else:
            kind = MessageType.REPLY
            metadata["interacted_message_id"] = payload["message"]["id"]
            extra["message_reference"] = {
                "type": 0,
                "message_id": payload["message"]["id"],
                "channel_id": payload["channel_id"],
                "guild_id": payload["guild_id"],
            }
        extra["interaction_metadata"] = metadata
        return self._create_message(int(payload["channel_id"]), data, files, kind=kind, extra=extra, **kw)

    def _webhook_target(self, params: dict[str, str]) -> Json:
        record = self._record_by_token(params)
        if params["message"] == "@original":
            if record.original_id is None:
                raise DiscordError(404, 10008, "Unknown Message")
            return self.messages[record.original_id]
        return self._message(int(params["message"]))

    async def _followup(self, request: RecordedRequest, params: dict[str, str]) -> Json | None:
        record = self._record_by_token(params)
        if record.callback_type is None:
            raise DiscordError(404, 10015, "Unknown Webhook")
        message = self._interaction_message(record, request.json or {}, request.files)
        return message if request.query.get("wait", "").lower() in ("1", "true") else None

    async def _get_webhook_message(self, request: RecordedRequest, params: dict[str, str]) -> Json:
        return self._webhook_target(params)

    async def _edit_webhook_message(self, request: RecordedRequest, params: dict[str, str]) -> Json:
        message = self._webhook_target(params)
        self._apply_edit(message, request.json or {}, request.files)
        return message

    async def _delete_webhook_message(self, request: RecordedRequest, params: dict[str, str]) -> None:
        del self.messages[int(self._webhook_target(params)["id"])]

    # channels and messages

    def _channel(self, params: dict[str, str]) -> int:
        if int(params["channel"]) != self.channel_id:
            raise DiscordError(404, 10003, "Unknown Channel")
        return self.channel_id

    def _message(self, message_id: int, channel_id: int | None = None) -> Json:
        message = self.messages.get(message_id)
        if message is None or (channel_id is not None and int(message["channel_id"]) != channel_id):
            raise DiscordError(404, 10008, "Unknown Message")
        return message

    async def _get_channel(self, request: RecordedRequest, params: dict[str, str]) -> Json:
        self._channel(params)
        return self.channel()

    async def _post_message(self, request: RecordedRequest, params: dict[str, str]) -> Json:
        channel_id = self._channel(params)
        return self._create_message(channel_id, request.json or {}, request.files, kind=MessageType.DEFAULT)

    async def _get_message(self, request: RecordedRequest, params: dict[str, str]) -> Json:
        return self._message(int(params["message"]), self._channel(params))

    async def _edit_message(self, request: RecordedRequest, params: dict[str, str]) -> Json:
        message = self._message(int(params["message"]), self._channel(params))
        self._apply_edit(message, request.json or {}, request.files)
        return message

    async def _delete_message(self, request: RecordedRequest, params: dict[str, str]) -> None:
        del self.messages[int(self._message(int(params["message"]), self._channel(params))["id"])]

    def _create_message(
        self,
        channel_id: int,
        data: Json,
        files: list[Upload],
        *,
        kind: MessageType,
        extra: Json | None = None,
        loading: bool = False,
    ) -> Json:
        content = data.get("content") or ""
        if not (content or data.get("embeds") or files or data.get("components") or loading):
            raise DiscordError(400, 50006, "Cannot send an empty message")
        message_id = self.snowflake()
        message: Json = {
            "id": str(message_id),
            "type": int(kind),
            "channel_id": str(channel_id),
            "author": self.bot_user,
            "content": content,
            "timestamp": now_iso(),
            "edited_timestamp": None,
            "tts": bool(data.get("tts", False)),
            "mention_everyone": False,
            "mentions": self._mentions(content),
            "mention_roles": [],
            "attachments": self._attachments(channel_id, data, files, []),
            "embeds": data.get("embeds") or [],
            "components": _with_ids(data.get("components") or []),
            "pinned": False,
            "flags": (int(data.get("flags") or 0) & SETTABLE_FLAGS) | (LOADING if loading else 0),
            **(extra or {}),
        }
        self.messages[message_id] = message
        return message

    def _apply_edit(self, message: Json, data: Json, files: list[Upload]) -> None:
        if "content" in data:
            message["content"] = data["content"] or ""
            message["mentions"] = self._mentions(message["content"])
        if "embeds" in data:
            message["embeds"] = data["embeds"] or []
        if "components" in data:
            message["components"] = _with_ids(data["components"] or [])
        if "attachments" in data or files:
            message["attachments"] = self._attachments(int(message["channel_id"]), data, files, message["attachments"])
        message["flags"] &= ~LOADING
        message["edited_timestamp"] = now_iso()

    def _mentions(self, content: str) -> list[Json]:
        ids = {int(i) for i in re.findall(r"<@!?(\d+)>", content)}
        mentioned = [self.members[i] for i in sorted(ids) if i in self.members]
        return [{**m["user"], "member": {k: v for k, v in m.items() if k != "user"}} for m in mentioned]

    def _attachments(self, channel_id: int, data: Json, files: list[Upload], previous: list[Json]) -> list[Json]:
        """The message's attachments after a create or edit: listed old ones kept, `files[n]` added."""
        uploads = {upload.index: upload for upload in files}
        listed = data.get("attachments")
        if listed is None:
            listed = [*previous, *({"id": index} for index in sorted(uploads))]
        kept = {a["id"]: a for a in previous}  # by snowflake; new files are listed by their small index
        result = []
        for item in listed:
            if str(item["id"]) in kept:
                result.append(kept[str(item["id"])])
                continue
            upload = uploads.get(int(item["id"]))
            if upload is None:
                raise DiscordError(400, 50035, "Invalid Form Body")
            result.append(self._attachment(channel_id, upload, item))
        return result

    def _attachment(self, channel_id: int, upload: Upload, item: Json) -> Json:
        attachment_id = self.snowflake()
        filename = item.get("filename") or upload.filename
        self.attachments[attachment_id] = upload.data
        url = f"{self.url}/attachments/{channel_id}/{attachment_id}/{filename}"
        attachment: Json = {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(upload.data),
            "url": url,
            "proxy_url": url,
            "content_type": _sniff(upload),
        }
        if item.get("description"):
            attachment["description"] = item["description"]
        size = png_size(upload.data)
        if size is not None:
            attachment["width"], attachment["height"] = size
        return attachment

    async def _cdn(self, request: web.Request) -> web.Response:
        data = self.attachments.get(int(request.match_info["attachment"]))
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")


def _walk(components: list[Json]) -> list[Json]:
    """Components and their children, depth first."""
    found = []
    for component in components:
        found.append(component)
        found.extend(_walk(component.get("components", [])))
    return found


def _with_ids(components: list[Json]) -> list[Json]:
    """Components as Discord echoes them: each gets a numeric id, counted in tree order."""
    result = copy.deepcopy(components)
    for number, component in enumerate(_walk(result), start=1):
        component.setdefault("id", number)
    return result


def _sniff(upload: Upload) -> str:
    if upload.data.startswith(PNG_SIGNATURE):
        return "image/png"
    if upload.data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return upload.content_type


def _rate_limit_headers(method: str, path: str) -> dict[str, str]:
    bucket = hashlib.sha1(f"{method} {re.sub(r'/[^/]{24,}', '/:token', path)}".encode()).hexdigest()[:16]
    return {
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "4",
        "X-RateLimit-Reset": f"{time.time() + 1:.3f}",
        "X-RateLimit-Reset-After": "1.000",
        "X-RateLimit-Bucket": bucket,
    }


async def _read_body(request: web.Request) -> tuple[Any, list[Upload]]:
    """The JSON body, or a multipart body's `payload_json` and its `files[n]` parts."""
    if not request.body_exists:
        return None, []
    if request.content_type == "application/json":
        return json.loads(await request.read()), []
    if request.content_type != "multipart/form-data":
        raise web.HTTPUnsupportedMediaType(text=request.content_type)
    payload: Any = None
    files: list[Upload] = []
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise web.HTTPBadRequest(text="nested multipart")
        data = bytes(await part.read())
        if part.name == "payload_json":
            payload = json.loads(data)
        elif part.name is not None and part.name.startswith("files["):
            content_type = part.headers.get("Content-Type", "application/octet-stream")
            files.append(Upload(part.name, part.filename or "", content_type, data))
    return payload, files
