"""Errors that reach a client. Each has a stable code (docs/protocol.md lists them)."""

from __future__ import annotations


class StordError(Exception):
    """Base of every error stord reports; `code` is what the wire protocol carries."""

    code = "error"

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code, "message": str(self)}


class LoadError(StordError):
    """A program object that cannot be loaded (malformed ELF, BTF, relocations)."""

    code = "load_error"


class ValidationError(StordError):
    """Bytecode rejected by static validation before it runs."""

    code = "invalid_program"


class VerifierError(StordError):
    """The kernel verifier refused the program; the message carries its log."""

    code = "verifier_rejected"


class CompileError(StordError):
    """C source that clang could not compile, or a jit translation failure."""

    code = "compile_error"


class ProgramFault(StordError):
    """The program did something it may not at run time (out-of-bounds access, bad call)."""

    code = "program_fault"


class BudgetExceeded(ProgramFault):
    """The instruction (interp) or back-edge (jit) budget ran out: a runaway loop."""

    code = "budget_exceeded"


class ResultOverflow(StordError):
    """An aggregate does not fit its type; stord never returns a wrapped number."""

    code = "overflow"


class EngineUnavailable(StordError):
    code = "engine_unavailable"


class BadRequest(StordError):
    code = "bad_request"


class AccessDenied(StordError):
    code = "access_denied"


class NotFound(StordError):
    code = "not_found"


class LimitExceeded(StordError):
    code = "limit_exceeded"


class Cancelled(StordError):
    code = "cancelled"


class WorkerCrashed(StordError):
    code = "worker_crashed"
