"""Thin front ends over the library or the client: a Telegram bot and a Streamlit app (extras
`telegram` and `streamlit`). Nothing here is imported by the rest of agelens."""
