from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OK: _ClassVar[ErrorCode]
    UNAUTHENTICATED: _ClassVar[ErrorCode]
    FORBIDDEN: _ClassVar[ErrorCode]
    NO_SUCH_SERVICE: _ClassVar[ErrorCode]
    OVERLOADED: _ClassVar[ErrorCode]
    DEADLINE_EXCEEDED: _ClassVar[ErrorCode]
    MALFORMED: _ClassVar[ErrorCode]
    TOO_LARGE: _ClassVar[ErrorCode]
    UNAVAILABLE: _ClassVar[ErrorCode]
    UNKNOWN_SESSION: _ClassVar[ErrorCode]
    HANDLER_ERROR: _ClassVar[ErrorCode]
    NO_SUCH_ACTION: _ClassVar[ErrorCode]
    CANCELLED: _ClassVar[ErrorCode]
    INTERNAL: _ClassVar[ErrorCode]
    DRAINING: _ClassVar[ErrorCode]
    REPLAYED: _ClassVar[ErrorCode]
    VERSION_MISMATCH: _ClassVar[ErrorCode]
    NOT_A_RECIPIENT: _ClassVar[ErrorCode]

class PeerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLIENT: _ClassVar[PeerKind]
    AGENT: _ClassVar[PeerKind]

class BalancePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_ROBIN: _ClassVar[BalancePolicy]
    WEIGHTED_ROUND_ROBIN: _ClassVar[BalancePolicy]
    LEAST_OUTSTANDING: _ClassVar[BalancePolicy]
OK: ErrorCode
UNAUTHENTICATED: ErrorCode
FORBIDDEN: ErrorCode
NO_SUCH_SERVICE: ErrorCode
OVERLOADED: ErrorCode
DEADLINE_EXCEEDED: ErrorCode
MALFORMED: ErrorCode
TOO_LARGE: ErrorCode
UNAVAILABLE: ErrorCode
UNKNOWN_SESSION: ErrorCode
HANDLER_ERROR: ErrorCode
NO_SUCH_ACTION: ErrorCode
CANCELLED: ErrorCode
INTERNAL: ErrorCode
DRAINING: ErrorCode
REPLAYED: ErrorCode
VERSION_MISMATCH: ErrorCode
NOT_A_RECIPIENT: ErrorCode
CLIENT: PeerKind
AGENT: PeerKind
ROUND_ROBIN: BalancePolicy
WEIGHTED_ROUND_ROBIN: BalancePolicy
LEAST_OUTSTANDING: BalancePolicy

class Envelope(_message.Message):
    __slots__ = ("message_id", "correlation_id", "action", "content_type", "traceparent", "tracestate", "idempotency_key", "attempt", "nonce", "sender", "sender_key", "ephemeral_key", "array_count", "error", "meta")
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SENDER_KEY_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_KEY_FIELD_NUMBER: _ClassVar[int]
    ARRAY_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    message_id: int
    correlation_id: int
    action: str
    content_type: str
    traceparent: str
    tracestate: str
    idempotency_key: str
    attempt: int
    nonce: bytes
    sender: str
    sender_key: bytes
    ephemeral_key: bytes
    array_count: int
    error: ErrorDetail
    meta: _containers.ScalarMap[str, str]
    def __init__(self, message_id: _Optional[int] = ..., correlation_id: _Optional[int] = ..., action: _Optional[str] = ..., content_type: _Optional[str] = ..., traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., attempt: _Optional[int] = ..., nonce: _Optional[bytes] = ..., sender: _Optional[str] = ..., sender_key: _Optional[bytes] = ..., ephemeral_key: _Optional[bytes] = ..., array_count: _Optional[int] = ..., error: _Optional[_Union[ErrorDetail, _Mapping]] = ..., meta: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("code", "message", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version", "peer_name", "token", "kind", "public_key")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PEER_NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    peer_name: str
    token: str
    kind: PeerKind
    public_key: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., peer_name: _Optional[str] = ..., token: _Optional[str] = ..., kind: _Optional[_Union[PeerKind, str]] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("protocol_version", "router_id", "heartbeat_ms", "max_message_bytes", "pub_endpoint", "server_key", "session_id")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PUB_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SERVER_KEY_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    router_id: str
    heartbeat_ms: int
    max_message_bytes: int
    pub_endpoint: str
    server_key: bytes
    session_id: int
    def __init__(self, protocol_version: _Optional[int] = ..., router_id: _Optional[str] = ..., heartbeat_ms: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., pub_endpoint: _Optional[str] = ..., server_key: _Optional[bytes] = ..., session_id: _Optional[int] = ...) -> None: ...

class Ready(_message.Message):
    __slots__ = ("service", "instance", "capacity", "weight", "policy", "actions", "public_key", "labels", "version", "free_slots")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    service: str
    instance: str
    capacity: int
    weight: int
    policy: BalancePolicy
    actions: _containers.RepeatedScalarFieldContainer[str]
    public_key: bytes
    labels: _containers.ScalarMap[str, str]
    version: str
    free_slots: int
    def __init__(self, service: _Optional[str] = ..., instance: _Optional[str] = ..., capacity: _Optional[int] = ..., weight: _Optional[int] = ..., policy: _Optional[_Union[BalancePolicy, str]] = ..., actions: _Optional[_Iterable[str]] = ..., public_key: _Optional[bytes] = ..., labels: _Optional[_Mapping[str, str]] = ..., version: _Optional[str] = ..., free_slots: _Optional[int] = ...) -> None: ...

class StreamGrant(_message.Message):
    __slots__ = ("credits", "instance")
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    credits: int
    instance: str
    def __init__(self, credits: _Optional[int] = ..., instance: _Optional[str] = ...) -> None: ...
