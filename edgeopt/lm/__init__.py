"""Decoder LMs: the quality gate (perplexity, KL, greedy agreement) and the tiny trained demo LM.

``quality`` measures an artifact through its runtime's KV-cache session (the code the device runner uses);
``tinylm`` trains a small Llama on text edgeopt ships, cached between runs. Nothing here imports torch at
module import.
"""
