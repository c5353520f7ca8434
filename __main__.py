"""``python -m mmevol``: the same as the ``mmevol`` command."""

from mmevol.cli import main

main()
