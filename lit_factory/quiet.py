"""Library messages a user of lit-factory cannot act on, silenced by their exact text; every other warning stays.

Each entry says who prints it and why it says nothing to our users. Filters match one message each, so a new or
different warning from the same library still shows.
"""

from __future__ import annotations

import logging
import warnings

#: (logger name, text the message starts with or contains): log records dropped.
LOG_RECORDS = (
    # DeepSpeed, imported by transformers/accelerate whenever it is installed, guesses its accelerator on CPU-only
    # machines; lit-factory does not use DeepSpeed unless the recipe names its strategy.
    ("DeepSpeed", "Setting accelerator to CPU"),
    # bitsandbytes on CPUs with AVX512-BF16 tries to download an optional faster kernel and falls back to its own.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
    # Lightning's product tips (litlogger, litmodels).
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip"),
    ("lightning.fabric.utilities.rank_zero", "💡 Tip"),
    # Printed when a callback asks for the step count before the loader was built: a detail of the order of hooks.
    ("lightning.pytorch.utilities.rank_zero", "Loading `train_dataloader` to estimate number of stepping batches"),
)

#: (message regex, category, module regex): warnings ignored.
WARNINGS = (
    # Lightning 2.6's own pytree helper uses an API torch 2.10+ deprecates.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, ""),
    # transformers 5 renamed gradient checkpointing; PEFT and our builder still call the old names, which work.
    (r"`gradient_checkpointing_enable` is deprecated", FutureWarning, ""),
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, ""),
    # Lightning checks module modes before `on_train_start`, where every stage switches its model to train mode
    # (a model loaded with `from_pretrained` starts in eval mode); frozen reference models stay in eval on purpose.
    (r"Found \d+ module\(s\) in eval mode at the start of training", Warning, ""),
    # `lit-factory` hands LightningCLI the command line it was given (shipped recipe paths resolved), which
    # Lightning takes for a mix of Python and command-line arguments.
    (r"LightningCLI's args parameter is intended", Warning, ""),
)


class _DropMessages(logging.Filter):
    def __init__(self, texts: list[str]) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.texts)


def silence_library_noise() -> None:
    """Install the filters (idempotent). Loggers are configured by name, so libraries imported later obey too."""
    by_logger: dict[str, list[str]] = {}
    for name, text in LOG_RECORDS:
        by_logger.setdefault(name, []).append(text)
    for name, texts in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(texts))
    for message, category, module in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
