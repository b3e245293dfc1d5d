"""Downstream tasks, fine-tuned from a pre-trained run through the methods' common interface
(``encode_image``, ``encode_text``, ``fuse``, ``match_logits``, ``cross_attentions``): image-text
retrieval, VQA, NLVR2, SNLI-VE and weakly-supervised grounding (ALBEF Sec. 5). ``run_tasks`` in
``vlpbench.downstream.runner`` runs them.

Each task is one module here that defines its config (a ``TaskConfig``) and its task class and
registers it (``registry.register_task``); importing this package registers them all. ``common``
and ``runner`` are shared by every task and define none.
"""

import importlib
import pkgutil

SHARED = ("common", "runner")

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in SHARED:
        importlib.import_module(f"{__name__}.{_module.name}")
