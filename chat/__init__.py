"""Shared code of the encrypted chat: protocol, broker logic, client session, key store.

Bot authors start at `chat.client.ChatClient`.
"""
