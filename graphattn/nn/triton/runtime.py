"""Loading Triton: whether it imports, interpreter or compiled mode, the kernel module (internal)."""

from __future__ import annotations

import os
import sys

__all__ = ["check_import", "kernels_module", "triton_available", "triton_unavailable_reason", "interpreted"]

_impl = None
_import_error: str | None = None
_checked = False


def check_import() -> str | None:
    """Import triton once (not the kernels); remember why when that fails."""
    global _checked, _import_error
    if not _checked:
        _checked = True
        try:
            import triton  # noqa: F401
        except Exception as exc:  # ImportError, or a broken install raising anything else
            _import_error = f"triton is not importable ({type(exc).__name__}: {exc}); pip install triton"
    return _import_error


def kernels_module():
    """The kernel module, defined on first use: Triton picks interpreter or compiled mode when a
    kernel is defined, from ``TRITON_INTERPRET`` at that moment."""
    global _impl
    if _impl is None:
        why = check_import()
        if why:
            raise RuntimeError(why)
        import triton.language.standard as std
        from triton.runtime.interpreter import InterpretedFunction

        from graphattn.nn.triton import kernels

        mine, theirs = (isinstance(f, InterpretedFunction) for f in (kernels._dense_fwd, std.sum))
        if mine != theirs:  # triton's own jit functions were defined in the other mode
            raise RuntimeError(
                f"triton was imported with TRITON_INTERPRET={'1' if theirs else 'unset'} and the kernels "
                f"are defined with TRITON_INTERPRET={'1' if mine else 'unset'}: set TRITON_INTERPRET "
                f"before triton is first imported in the process")
        _impl = kernels
    return _impl


def triton_available() -> bool:
    """Whether ``triton`` is installed and imports (the kernels themselves load on first use)."""
    return check_import() is None


def triton_unavailable_reason() -> str | None:
    """Why triton cannot be used, or None when it can."""
    return check_import()


def interpreted() -> bool:
    """Whether the kernels run (or would run) under the Triton interpreter on CPU.

    Triton picks interpreter or compiled mode when a jit function is defined, from
    ``TRITON_INTERPRET`` at that moment; its own library functions are defined when triton is
    first imported. So the interpreter needs ``TRITON_INTERPRET=1`` before triton's first import
    (the test suite runs the interpreter tests in a subprocess for that reason)."""
    from_env = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if _impl is not None or "triton" in sys.modules:
        if check_import():
            return False
        import triton.language.standard as std
        from triton.runtime.interpreter import InterpretedFunction

        return isinstance((_impl._dense_fwd if _impl is not None else std.sum), InterpretedFunction)
    return from_env
