"""`agelens telegram`: a Telegram bot that answers a photo with the faces' apparent age and gender.

Needs the `telegram` extra (`pip install 'agelens[telegram]'`, python-telegram-bot). A user sends
a photo, or an image as a file; the bot answers with the image, boxes drawn, and a caption with a
line per face (`F 27 (21-34)`: gender, apparent age, the range meant to hold the true age 80% of
the time). `/start` and `/help` say what it does and what it cannot say.

The token comes from an environment variable (AGELENS_TELEGRAM_TOKEN by default), never from the
command line, where other users of the machine could read it. Images are held in memory for the
one analysis and never written anywhere. Each chat may send `per_minute` images a minute.
Analysis runs in this process (the library) or on a running agelens service (the client).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agelens.bots.analysis import ImageAnalysis, face_label
from agelens.errors import AgelensError, require_extra

if TYPE_CHECKING:
    from telegram import Update
    from telegram.ext import Application, ContextTypes

logger = logging.getLogger(__name__)

TOKEN_VARIABLE = "AGELENS_TELEGRAM_TOKEN"
#: Telegram's limit for files a bot may download
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
#: Telegram's limit for a photo's caption
MAX_CAPTION_CHARS = 1024

HELP_TEXT = (
    "Send me a photo (or an image as a file) and I answer with every face I find, boxed, and a "
    "line per face: gender, apparent age, and the range meant to hold the true age 8 times "
    'in 10, e.g. "F 27 (21-34)".\n\n'
    'What I cannot say: anyone\'s real age, identity, or how they see themselves. "F" and '
    "\"M\" are a model's guess of apparent gender from the face alone, not a person's gender. "
    "Ages are apparent ages, often off by 5 years or more, more so for children, the very old, "
    "and faces that are small, blurred, turned away or half hidden. Do not use the answers to "
    "decide anything about a person.\n\n"
    "Your photos are analysed in memory and not stored."
)
START_TEXT = "Hello! " + HELP_TEXT
NOT_AN_IMAGE_TEXT = "Send a photo, or an image file (JPEG, PNG, WebP, HEIC, ...). /help"
NO_FACE_TEXT = "I found no face in this image. Faces that are small, turned away or dark are hard."
UNREADABLE_TEXT = "I could not read that image ({reason})."
TOO_LARGE_TEXT = "That file is too large for me (over {limit} MB)."
FAILED_TEXT = "Something went wrong while analysing that image; please try again later."
RATE_LIMITED_TEXT = "That is more than {limit} images a minute; please wait {wait} s."


class TelegramConfigurationError(AgelensError):
    """The bot cannot start: no token, or no extra installed."""

    code = "telegram_configuration_error"


class ChatRateLimiter:
    """At most `per_minute` images a minute per chat (a sliding window of timestamps); memory
    bounded by forgetting the least recently seen chats beyond `max_chats`."""

    def __init__(self, per_minute: int, *, max_chats: int = 10_000) -> None:
        self.per_minute = per_minute
        self.max_chats = max_chats
        self._seen: OrderedDict[int, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait_seconds(self, chat_id: int, now: float | None = None) -> float:
        """0 and count the image if the chat may send one now, else seconds until it may."""
        if self.per_minute <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for t in self._seen.pop(chat_id, []) if now - t < 60.0]
            self._seen[chat_id] = recent
            while len(self._seen) > self.max_chats:
                self._seen.popitem(last=False)
            if len(recent) >= self.per_minute:
                return 60.0 - (now - recent[0])
            recent.append(now)
            return 0.0


def caption_for(faces: list[str]) -> str:
    """The caption of an answer: a line per face, cut to Telegram's caption limit."""
    lines = [f"{len(faces)} face{'s' if len(faces) != 1 else ''}:", *faces]
    caption = "\n".join(lines)
    if len(caption) <= MAX_CAPTION_CHARS:
        return caption
    kept: list[str] = []
    for index, line in enumerate(lines):
        rest = f"\n... and {len(lines) - index} more"
        if len("\n".join([*kept, line])) + len(rest) > MAX_CAPTION_CHARS:
            return "\n".join(kept) + rest
        kept.append(line)
    return "\n".join(kept)  # pragma: no cover


@dataclass
class AgeBot:
    """The bot's behaviour, independent of how it is run (polling here, or a webhook)."""

    analysis: ImageAnalysis
    limiter: ChatRateLimiter
    max_bytes: int = MAX_DOWNLOAD_BYTES

    async def start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/start: what the bot does and cannot say."""
        if update.effective_message is not None:
            await update.effective_message.reply_text(START_TEXT)

    async def help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/help: the same."""
        if update.effective_message is not None:
            await update.effective_message.reply_text(HELP_TEXT)

    async def other(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Anything that is not a photo or an image file."""
        if update.effective_message is not None:
            await update.effective_message.reply_text(NOT_AN_IMAGE_TEXT)

    async def image(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A photo or an image file: analyse it and answer with the annotated image."""
        message = update.effective_message
        chat = update.effective_chat
        if message is None or chat is None:
            return
        if message.photo:
            attachment: Any = message.photo[-1]  # the largest size Telegram made
        elif message.document is not None and _is_image_document(message.document.mime_type):
            attachment = message.document
        else:
            await message.reply_text(NOT_AN_IMAGE_TEXT)
            return
        wait = self.limiter.wait_seconds(chat.id)
        if wait > 0:
            await message.reply_text(
                RATE_LIMITED_TEXT.format(limit=self.limiter.per_minute, wait=max(1, round(wait)))
            )
            return
        if attachment.file_size is not None and attachment.file_size > self.max_bytes:
            await message.reply_text(TOO_LARGE_TEXT.format(limit=self.max_bytes // 2**20))
            return
        telegram_file = await attachment.get_file()
        data = bytes(await telegram_file.download_as_bytearray())  # in memory, never on disk
        if len(data) > self.max_bytes:
            await message.reply_text(TOO_LARGE_TEXT.format(limit=self.max_bytes // 2**20))
            return
        try:
            analysed = await self.analysis.analyze_async(data)
        except Exception as error:  # every failure gets an answer
            reason = _unreadable_reason(error)
            if reason is None:
                logger.exception("analysis failed in chat %s", chat.id)
                await message.reply_text(FAILED_TEXT)
            else:
                await message.reply_text(UNREADABLE_TEXT.format(reason=reason))
            return
        faces = analysed.result.faces
        if not faces:
            await message.reply_text(NO_FACE_TEXT)
            return
        await message.reply_photo(
            photo=analysed.annotated_jpeg, caption=caption_for([face_label(f) for f in faces])
        )


def _is_image_document(mime_type: str | None) -> bool:
    return bool(mime_type) and str(mime_type).lower().startswith("image/")


def _unreadable_reason(error: Exception) -> str | None:
    """Why an image could not be read, for the user; None when the failure is not the image's."""
    from agelens.errors import ImageDecodeError

    if isinstance(error, ImageDecodeError):
        return str(error).split(":")[-1].strip() or "not an image"
    try:
        from agelens.client import ImageDecodeError as RemoteImageDecodeError
    except AgelensError:  # pragma: no cover - no httpx: then no remote analysis either
        return None
    if isinstance(error, RemoteImageDecodeError):
        return error.message.split(":")[-1].strip() or "not an image"
    return None


def build_application(
    token: str,
    bot: AgeBot,
    *,
    base_url: str | None = None,
    base_file_url: str | None = None,
) -> Application[Any, Any, Any, Any, Any, Any]:
    """The python-telegram-bot Application with the bot's handlers. `base_url` and
    `base_file_url` point it at another Bot API server (a self-hosted one, or a test's)."""
    require_extra("telegram", "telegram")
    from telegram.ext import ApplicationBuilder, CommandHandler, MessageHandler, filters

    async def release(_: Application[Any, Any, Any, Any, Any, Any]) -> None:
        await bot.analysis.aclose()

    builder = ApplicationBuilder().token(token).post_shutdown(release)
    if base_url is not None:
        builder = builder.base_url(base_url)
    if base_file_url is not None:
        builder = builder.base_file_url(base_file_url)
    application = builder.build()
    application.add_handler(CommandHandler("start", bot.start))
    application.add_handler(CommandHandler("help", bot.help))
    application.add_handler(MessageHandler(filters.PHOTO | filters.Document.ALL, bot.image))
    application.add_handler(MessageHandler(filters.ALL, bot.other))
    return application


def token_from_environment(variable: str = TOKEN_VARIABLE) -> str:
    """The bot token from the environment; TelegramConfigurationError naming the variable."""
    import os

    token = os.environ.get(variable, "").strip()
    if not token:
        raise TelegramConfigurationError(
            f"set the bot's token (from @BotFather) in the environment variable {variable}"
        )
    return token


def run_polling(application: Application[Any, Any, Any, Any, Any, Any]) -> None:
    """Answer updates until interrupted (Ctrl+C or SIGTERM)."""
    from telegram import Update

    application.run_polling(allowed_updates=Update.ALL_TYPES)
