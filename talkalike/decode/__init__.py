"""Stage 7a: turn a model into the persona's replies; one streaming loop over interchangeable engines."""
