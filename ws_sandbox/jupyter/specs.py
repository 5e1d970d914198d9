"""Kernelspecs: how our languages look to Jupyter clients.

The names are those Jupyter clients expect (Open WebUI asks for ``python3``); each maps to
one of our session languages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ws_sandbox.exceptions import NotFound, quoted
from ws_sandbox.settings import Language


@dataclass(frozen=True, slots=True)
class KernelSpec:
    """One kernelspec: its Jupyter name and what ``kernel_info_reply`` says about it."""

    name: str
    language: Language
    display_name: str
    language_info: dict[str, Any]

    def model(self) -> dict[str, Any]:
        """The kernelspec as ``GET /api/kernelspecs`` shows it."""
        return {
            "name": self.name,
            "spec": {
                "argv": [],
                "env": {},
                "display_name": self.display_name,
                "language": self.language_info["name"],
                "interrupt_mode": "message",
                "metadata": {"sandboxed": True},
            },
            "resources": {},
        }


SPECS: tuple[KernelSpec, ...] = (
    KernelSpec("python3", "python", "Python 3 (sandboxed)", {
        "name": "python", "version": "3", "mimetype": "text/x-python",
        "file_extension": ".py", "pygments_lexer": "ipython3",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "nbconvert_exporter": "python"}),
    KernelSpec("javascript", "javascript", "JavaScript (Node.js, sandboxed)", {
        "name": "javascript", "version": "18", "mimetype": "application/javascript",
        "file_extension": ".js", "pygments_lexer": "javascript",
        "codemirror_mode": "javascript"}),
    KernelSpec("bash", "shell", "Bash (sandboxed)", {
        "name": "bash", "version": "5", "mimetype": "text/x-sh", "file_extension": ".sh",
        "pygments_lexer": "bash", "codemirror_mode": "shell"}),
    KernelSpec("rust", "rust", "Rust (sandboxed)", {
        "name": "rust", "version": "1", "mimetype": "text/rust", "file_extension": ".rs",
        "pygments_lexer": "rust", "codemirror_mode": "rust"}),
)

#: Other names clients use for the same kernels.
ALIASES = {"python": "python3", "shell": "bash", "sh": "bash", "node": "javascript",
           "nodejs": "javascript", "js": "javascript"}


def enabled_specs(languages: tuple[Language, ...]) -> list[KernelSpec]:
    """The kernelspecs of the enabled languages."""
    return [spec for spec in SPECS if spec.language in languages]


def default_spec(languages: tuple[Language, ...]) -> KernelSpec:
    """Python when it is enabled, else the first enabled language."""
    specs = enabled_specs(languages)
    if not specs:
        raise NotFound("no language is enabled")
    return specs[0]


def find_spec(name: str | None, languages: tuple[Language, ...], *,
              aliases: bool = True) -> KernelSpec:
    """The enabled kernelspec called ``name`` (the default when ``name`` is empty); with
    ``aliases``, one of :data:`ALIASES` names one too (starting a kernel takes them, but a
    kernelspec is served only under its own name, as Jupyter Server serves it).

    Raises:
        NotFound: no such kernelspec, or its language is switched off.
    """
    if not name:
        return default_spec(languages)
    wanted = ALIASES.get(name, name) if aliases else name
    for spec in enabled_specs(languages):
        if spec.name == wanted:
            return spec
    names = ", ".join(s.name for s in enabled_specs(languages))
    raise NotFound(f"no such kernel {quoted(name)}; available: {names}")


def kernelspecs_model(languages: tuple[Language, ...]) -> dict[str, Any]:
    """The body of ``GET /api/kernelspecs``."""
    return {"default": default_spec(languages).name,
            "kernelspecs": {s.name: s.model() for s in enabled_specs(languages)}}
