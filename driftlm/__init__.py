"""driftlm: keep a masked language model fresh while the text it sees keeps changing.

The package root holds the command line (`driftlm`, `python -m driftlm`); the services live in
`driftlm.services`, the array kernels in `driftlm.kernels`, the generated contracts in `driftlm.v1`.
"""

from driftlm.services.core.version import VERSION

__version__ = VERSION
