"""actors: the actor runtime every conat service stands on.

An :class:`Actor` subclass is bound to a subject pattern; an :class:`ActorSystem` runs actor types
on one connection, activates one instance per key on demand, passivates idle keys, supervises
crashes with backoff and escalation, answers NATS micro ``$SRV`` discovery, guards the single owner
of a keyed type on the bus, and stops gracefully.
"""

from conat import EndpointStatistics as EndpointStatistics
from subjects import PARTITION_PREFIX as PARTITION_PREFIX

from ._activation import State as State
from ._activation import Timer as Timer
from ._actor import NO_REPLY as NO_REPLY
from ._actor import Actor as Actor
from ._actor import ActorSpec as ActorSpec
from ._actor import Reply as Reply
from ._errors import LOOP_DETECTED as LOOP_DETECTED
from ._errors import ActivationFailed as ActivationFailed
from ._errors import ActorDefinitionError as ActorDefinitionError
from ._errors import ActorError as ActorError
from ._errors import BrokenInvariant as BrokenInvariant
from ._errors import Escalation as Escalation
from ._errors import IllegalTransition as IllegalTransition
from ._errors import OwnedElsewhere as OwnedElsewhere
from ._errors import PartitionsUnmapped as PartitionsUnmapped
from ._mailbox import MailboxStatistics as MailboxStatistics
from ._ownership import OwnerNotice as OwnerNotice
from ._partitions import Partitions as Partitions
from ._partitions import partition_of as partition_of
from ._partitions import partition_subject as partition_subject
from ._partitions import subject_mapping as subject_mapping
from ._partitions import wait_for_partitions as wait_for_partitions
from ._policy import Escalate as Escalate
from ._policy import Restart as Restart
from ._policy import RestartPolicy as RestartPolicy
from ._policy import RestartTracker as RestartTracker
from ._reminders import MemoryReminderStore as MemoryReminderStore
from ._reminders import Reminder as Reminder
from ._reminders import ReminderStore as ReminderStore
from ._runtime import ActorRuntime as ActorRuntime
from ._runtime import ActorStatistics as ActorStatistics
from ._runtime import DeadLetter as DeadLetter
from ._system import ActorSystem as ActorSystem
from ._system import actor_proxy as actor_proxy
from ._workers import Workers as Workers
from ._workers import partition_option as partition_option
from ._workers import serving_workers as serving_workers
from ._workers import worker_options as worker_options

__all__ = [
    "ActivationFailed",
    "Actor",
    "ActorDefinitionError",
    "ActorError",
    "ActorRuntime",
    "ActorSpec",
    "ActorStatistics",
    "ActorSystem",
    "BrokenInvariant",
    "DeadLetter",
    "EndpointStatistics",
    "Escalate",
    "Escalation",
    "IllegalTransition",
    "LOOP_DETECTED",
    "MailboxStatistics",
    "MemoryReminderStore",
    "NO_REPLY",
    "OwnedElsewhere",
    "OwnerNotice",
    "PARTITION_PREFIX",
    "Partitions",
    "PartitionsUnmapped",
    "Reminder",
    "ReminderStore",
    "Reply",
    "Restart",
    "RestartPolicy",
    "RestartTracker",
    "State",
    "Timer",
    "Workers",
    "actor_proxy",
    "partition_of",
    "partition_subject",
    "serving_workers",
    "subject_mapping",
    "wait_for_partitions",
    "partition_option",
    "worker_options",
]
