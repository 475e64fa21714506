"""What a row's tokens become: the text with stops and hold-back (``completion``), log-probabilities
(``logprobs``) and tool calls parsed per model family (``toolcalls``). Pure Python, never torch.
"""
