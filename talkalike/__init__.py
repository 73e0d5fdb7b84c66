"""talkalike: turn your own chat exports into a chatbot that texts like you.

Stages, data flowing one way:
sources (whatsapp, telegram) -> store -> clean -> privacy -> segment -> dataset -> train -> evaluate -> generate
-> chat / serve / export. `talkalike --help` lists the commands.
"""

__version__ = "0.1.0"

import os as _os

# transformers 5.25 on replaces layers with kernels it downloads from the Hugging Face Hub whenever the `kernels`
# package is installed (a dependency of transformers itself), at every model load on a GPU. talkalike loads offline
# and keeps its maths and speed measured (BENCHMARKS.md), so that is off unless the user sets USE_HUB_KERNELS.
_os.environ.setdefault("USE_HUB_KERNELS", "0")
