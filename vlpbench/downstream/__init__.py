"""Downstream tasks, fine-tuned from a pre-trained run through the methods' common interface
(``encode_image``, ``encode_text``, ``fuse``, ``match_logits``, ``cross_attentions``): image-text
retrieval, VQA, NLVR2, SNLI-VE and weakly-supervised grounding (ALBEF Sec. 5). ``run_tasks`` in
``vlpbench.downstream.runner`` runs them; each task is one module here."""
