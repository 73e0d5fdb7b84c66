"""talkalike: turn your own chat exports into a chatbot that texts like you.

Stages, data flowing one way:
sources (whatsapp, telegram) -> store -> clean -> privacy -> segment -> dataset -> train -> evaluate -> generate
-> chat / serve / export. `talkalike --help` lists the commands.
"""

__version__ = "0.1.0"
