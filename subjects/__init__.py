"""conat's subjects: grammar, wildcard matching, token codec, permission sets and well-known names.

Pure (no I/O) and dependency-light, so every other package can rely on it. Which subjects exist and
who may use them: docs/design.md ("Subjects").
"""

from ._grammar import MAX_SUBJECT_BYTES as MAX_SUBJECT_BYTES
from ._grammar import InvalidSubject as InvalidSubject
from ._grammar import Reason as Reason
from ._grammar import is_literal as is_literal
from ._grammar import is_valid_pattern as is_valid_pattern
from ._grammar import is_valid_subject as is_valid_subject
from ._grammar import split_tokens as split_tokens
from ._grammar import validate_pattern as validate_pattern
from ._grammar import validate_subject as validate_subject
from ._grammar import validate_token as validate_token
from ._match import SubjectIndex as SubjectIndex
from ._match import matches as matches
from ._match import pattern_is_subset as pattern_is_subset
from ._match import subjects_collide as subjects_collide
from ._names import HUB as HUB
from ._names import INTEREST_PROBE as INTEREST_PROBE
from ._names import PARTITION_PREFIX as PARTITION_PREFIX
from ._names import PUBLIC_PATTERN as PUBLIC_PATTERN
from ._names import ScopeKind as ScopeKind
from ._names import account_scope as account_scope
from ._names import bootlog_host as bootlog_host
from ._names import bootlog_project as bootlog_project
from ._names import fs_project as fs_project
from ._names import host_scope as host_scope
from ._names import inbox_pattern as inbox_pattern
from ._names import inbox_prefix as inbox_prefix
from ._names import key_token as key_token
from ._names import master_account_api as master_account_api
from ._names import master_host_api as master_host_api
from ._names import parse_scope as parse_scope
from ._names import partitioned_pattern as partitioned_pattern
from ._names import persist_pattern as persist_pattern
from ._names import persist_scope as persist_scope
from ._names import project_pattern as project_pattern
from ._names import project_scope as project_scope
from ._names import project_subject as project_subject
from ._names import public as public
from ._names import runner_host as runner_host
from ._names import scope_patterns as scope_patterns
from ._names import service_subject as service_subject
from ._names import watch_project as watch_project
from ._names import watch_project_pattern as watch_project_pattern
from ._permissions import NatsPermissions as NatsPermissions
from ._permissions import Permissions as Permissions
from ._policy import DEFAULT_RESPONSES as DEFAULT_RESPONSES
from ._policy import MASTER_BUS as MASTER_BUS
from ._policy import SERVER_NAME_PREFIX as SERVER_NAME_PREFIX
from ._policy import Grant as Grant
from ._policy import InvalidBus as InvalidBus
from ._policy import Principal as Principal
from ._policy import ResponsePermission as ResponsePermission
from ._policy import Scope as Scope
from ._policy import bus_server_name as bus_server_name
from ._policy import grant as grant
from ._policy import leaf_permissions as leaf_permissions
from ._policy import parse_bus as parse_bus
from ._policy import server_bus as server_bus
from ._tokens import EMPTY_TOKEN as EMPTY_TOKEN
from ._tokens import decode_token as decode_token
from ._tokens import decode_token_str as decode_token_str
from ._tokens import encode_token as encode_token

__all__ = [
    "DEFAULT_RESPONSES",
    "EMPTY_TOKEN",
    "Grant",
    "HUB",
    "INTEREST_PROBE",
    "InvalidBus",
    "InvalidSubject",
    "MASTER_BUS",
    "MAX_SUBJECT_BYTES",
    "NatsPermissions",
    "PARTITION_PREFIX",
    "PUBLIC_PATTERN",
    "Permissions",
    "Principal",
    "Reason",
    "ResponsePermission",
    "SERVER_NAME_PREFIX",
    "Scope",
    "ScopeKind",
    "SubjectIndex",
    "account_scope",
    "bootlog_host",
    "bootlog_project",
    "bus_server_name",
    "decode_token",
    "decode_token_str",
    "encode_token",
    "fs_project",
    "grant",
    "host_scope",
    "inbox_pattern",
    "inbox_prefix",
    "is_literal",
    "is_valid_pattern",
    "is_valid_subject",
    "key_token",
    "leaf_permissions",
    "master_account_api",
    "master_host_api",
    "matches",
    "parse_bus",
    "parse_scope",
    "partitioned_pattern",
    "pattern_is_subset",
    "persist_pattern",
    "persist_scope",
    "project_pattern",
    "project_scope",
    "project_subject",
    "public",
    "runner_host",
    "scope_patterns",
    "server_bus",
    "service_subject",
    "split_tokens",
    "subjects_collide",
    "validate_pattern",
    "validate_subject",
    "validate_token",
    "watch_project",
    "watch_project_pattern",
]
