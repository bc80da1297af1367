"""``python -m app`` is the ``callpulse`` command."""

from app.cli import main

main()
