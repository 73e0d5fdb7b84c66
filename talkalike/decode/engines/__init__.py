"""Decode engines: the forward passes of one conversation, one file per way of running them."""
