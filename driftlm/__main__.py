"""`python -m driftlm` is the `driftlm` command."""

from driftlm.commands import main

main()
