"""An echo bot on python-telegram-bot, unchanged from how one is written for Telegram,
with its base URL pointed at maxd: long polling (getUpdates), and every text message is
answered with the same text as a reply (sendMessage with reply_parameters).

Usage: echo_bot.py BASE_URL   (the token comes in the environment, MAXD_BOT_TOKEN, so
it is not on a command line). It prints "polling" once getMe has answered and nothing
else; it never prints tokens or message texts.
"""

import os
import sys

from telegram import Update
from telegram.ext import ApplicationBuilder, ContextTypes, MessageHandler, filters


async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.message.reply_text(update.message.text, do_quote=True)


async def started(app) -> None:
    me = app.bot.bot
    print(f"polling as bot {me.id} is_bot={me.is_bot}", flush=True)


def main() -> None:
    app = (
        ApplicationBuilder()
        .token(os.environ["MAXD_BOT_TOKEN"])
        .base_url(sys.argv[1])
        .post_init(started)
        .build()
    )
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
    # poll_interval 0 and a long-poll timeout: updates arrive as they are made.
    app.run_polling(poll_interval=0.0, timeout=10, drop_pending_updates=False)


if __name__ == "__main__":
    main()
