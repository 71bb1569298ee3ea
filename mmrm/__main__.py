"""``python -m mmrm`` runs the ``mmrm`` command."""

from mmrm.cli import main

main()
