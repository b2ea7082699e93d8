"""What the commands tell the user on the console, where two commands say the same thing."""

from __future__ import annotations

from rich.console import Console


def print_skipped_slides(console: Console, failures: dict[str, str], n_slides: int) -> None:
    """Tell the user which slides a run skipped, each with its reason (nothing when none failed)."""
    if failures:
        console.print(f"[red]{len(failures)} of {n_slides} slides failed and were skipped:[/red]")
        for slide_id, reason in failures.items():
            console.print(f"  [red]{slide_id}[/red]: {reason}")
