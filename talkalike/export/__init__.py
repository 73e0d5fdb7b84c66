"""Stage 7c: the run as files for local runners: merged weights, GGUF, an Ollama Modelfile."""
