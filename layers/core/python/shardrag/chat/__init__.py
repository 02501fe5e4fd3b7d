"""Multi-turn chat: conversations kept per caller, follow-ups condensed before retrieval, answers streamed."""

from __future__ import annotations

from shardrag.chat.condense import Condensed, Condenser, DeterministicCondenser, LlmCondenser
from shardrag.chat.conversations import ConversationStore, DynamoDbConversationStore, SessionNotFound
from shardrag.chat.records import ChatCaller, ChatEvent, ChatRequest, HistoryTurn, StoredTurn, parse_chat_body
from shardrag.chat.service import ChatService, Retrieval

__all__ = [
    "ChatCaller",
    "ChatEvent",
    "ChatRequest",
    "ChatService",
    "Condensed",
    "Condenser",
    "ConversationStore",
    "DeterministicCondenser",
    "DynamoDbConversationStore",
    "HistoryTurn",
    "LlmCondenser",
    "Retrieval",
    "SessionNotFound",
    "StoredTurn",
    "parse_chat_body",
]
