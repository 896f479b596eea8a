"""A fake Telegram Bot API server on loopback: it speaks enough of the Bot API for a polling bot
(getMe, deleteWebhook, getUpdates, getFile and file downloads, sendMessage, sendPhoto), serves
the updates a test queues (with real image files behind their file ids) and records every
request the bot makes. Point python-telegram-bot at it with `base_url` / `base_file_url`."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

BOT_USER = {
    "id": 700000001,
    "is_bot": True,
    "first_name": "agelens",
    "username": "agelens_test_bot",
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}


@dataclass
class Sent:
    """One message the bot sent: the method, its form fields, and any uploaded file's bytes."""

    method: str
    fields: dict[str, str]
    files: dict[str, bytes]

    @property
    def chat_id(self) -> int:
        return int(self.fields["chat_id"])


@dataclass
class FakeBotApi:
    """The server's state. Use `queue_*` to add updates; read `sent` for the bot's replies."""

    token: str
    base: str = ""
    updates: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"{self.base}/bot"

    @property
    def base_file_url(self) -> str:
        return f"{self.base}/file/bot"

    # ------------------------------------------------------------------ what users send

    def _message(self, chat_id: int, **content: Any) -> dict[str, Any]:
        user = {"id": chat_id, "is_bot": False, "first_name": f"User{chat_id}"}
        return {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private", "first_name": user["first_name"]},
            "from": user,
            **content,
        }

    def _queue(self, message: dict[str, Any]) -> None:
        with self._lock:
            self.updates.append({"update_id": 1000 + len(self.updates), "message": message})

    def _file(self, data: bytes, name: str) -> dict[str, Any]:
        number = next(self._ids)
        file_id = f"file-{number}"
        self.files[file_id] = (
            f"{name.split('/')[0]}/file_{number}.{name.rsplit('.', 1)[-1]}",
            data,
        )
        return {"file_id": file_id, "file_unique_id": f"unique-{number}", "file_size": len(data)}

    def queue_command(self, chat_id: int, command: str) -> None:
        self._queue(
            self._message(
                chat_id,
                text=command,
                entities=[{"type": "bot_command", "offset": 0, "length": len(command)}],
            )
        )

    def queue_text(self, chat_id: int, text: str) -> None:
        self._queue(self._message(chat_id, text=text))

    def queue_photo(
        self, chat_id: int, sizes: list[tuple[bytes, int, int]], caption: str | None = None
    ) -> None:
        """A photo as Telegram delivers it: several sizes, smallest first."""
        photo = [
            {**self._file(data, "photos/p.jpg"), "width": width, "height": height}
            for data, width, height in sizes
        ]
        extra = {"caption": caption} if caption else {}
        self._queue(self._message(chat_id, photo=photo, **extra))

    def queue_document(self, chat_id: int, data: bytes, file_name: str, mime_type: str) -> None:
        document = {**self._file(data, f"documents/{file_name}"), "file_name": file_name}
        document["mime_type"] = mime_type
        self._queue(self._message(chat_id, document=document))

    # ------------------------------------------------------------------ the Bot API

    def replies_to(self, chat_id: int) -> list[Sent]:
        with self._lock:
            return [s for s in self.sent if s.chat_id == chat_id]

    async def handle(self, request: Request) -> Response:
        if request.path_params["token"] != self.token:
            return JSONResponse(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status_code=401
            )
        method = request.path_params["method"]
        fields: dict[str, str] = {}
        files: dict[str, bytes] = {}
        async with request.form() as form:  # closes the uploads' spooled files
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files[key] = await value.read()
                else:
                    fields[key] = str(value)
        self.calls.append(method)
        if method == "getMe":
            return _ok(BOT_USER)
        if method in {"deleteWebhook", "setMyCommands"}:
            return _ok(True)
        if method == "getUpdates":
            offset = int(fields.get("offset", "0"))
            with self._lock:
                pending = [u for u in self.updates if u["update_id"] >= offset]
            if not pending:
                await asyncio.sleep(0.05)  # a short long-poll
            return _ok(pending)
        if method == "getFile":
            file_id = fields["file_id"]
            if file_id not in self.files:
                return JSONResponse(
                    {"ok": False, "error_code": 400, "description": "Bad Request: invalid file_id"},
                    status_code=400,
                )
            path, data = self.files[file_id]
            return _ok(
                {
                    "file_id": file_id,
                    "file_unique_id": f"unique-{file_id}",
                    "file_size": len(data),
                    "file_path": path,
                }
            )
        if method in {"sendMessage", "sendPhoto"}:
            with self._lock:
                self.sent.append(Sent(method, fields, files))
            chat_id = int(fields["chat_id"])
            reply: dict[str, Any] = {
                "message_id": next(self._ids),
                "date": int(time.time()),
                "chat": {"id": chat_id, "type": "private"},
                "from": BOT_USER,
            }
            if method == "sendMessage":
                reply["text"] = fields.get("text", "")
            else:
                reply["caption"] = fields.get("caption", "")
                reply["photo"] = [
                    {"file_id": "sent", "file_unique_id": "sent", "width": 1, "height": 1}
                ]
            return _ok(reply)
        return JSONResponse(
            {"ok": False, "error_code": 404, "description": f"Not Found: method {method}"},
            status_code=404,
        )

    async def download(self, request: Request) -> Response:
        if request.path_params["token"] != self.token:
            return Response(status_code=401)
        path = request.path_params["path"]
        for stored_path, data in self.files.values():
            if stored_path == path:
                return Response(data, media_type="application/octet-stream")
        return Response(status_code=404)


def _ok(result: Any) -> JSONResponse:
    return JSONResponse({"ok": True, "result": result})


class FakeBotApiServer:
    """The fake Bot API served by uvicorn on a thread, on a free loopback port."""

    def __init__(self, token: str) -> None:
        self.api = FakeBotApi(token)
        app = Starlette(
            routes=[
                Route("/bot{token}/{method}", self.api.handle, methods=["GET", "POST"]),
                Route("/file/bot{token}/{path:path}", self.api.download, methods=["GET"]),
            ]
        )
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.api.base = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", loop="asyncio", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> FakeBotApi:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake Bot API server did not start")
            time.sleep(0.01)
        return self.api

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()


def decoded_fields(sent: Sent) -> dict[str, Any]:
    """A sent message's fields with the JSON-encoded ones (numbers, objects) decoded."""
    out: dict[str, Any] = {}
    for key, value in sent.fields.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out
