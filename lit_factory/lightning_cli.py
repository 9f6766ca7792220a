"""LightningCLI for the trainer subcommands (fit/validate/test/predict), with one-line errors."""

from __future__ import annotations

import sys
from typing import NoReturn, Optional

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_factory.cli import fail
from lit_factory.errors import LitFactoryError


class OneLineErrorParser(LightningArgumentParser):
    """jsonargparse prints usage plus a multi-line report; users get the report on one line and status 2."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse is probing internally and catches this
            return super().error(message, ex)
        sys.exit(fail(message))


class FactoryCLI(LightningCLI):
    """LightningCLI where the recipe names both the stage (``model``) and the data module (``data``)."""

    def init_parser(self, **kwargs):
        kwargs.setdefault("dump_header", ["lit-factory recipe (lit-factory fit --config this.yaml)"])
        parser = OneLineErrorParser(**kwargs)
        from jsonargparse import ActionConfigFile

        parser.add_argument("-c", "--config", action=ActionConfigFile, help="Path to a recipe (YAML).")
        return parser

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would rebuild the model from the checkpoint's hyperparameters, which name no stage class (they
        # are plain values); the recipe already is the whole configuration, the checkpoint only restores state.
        return None

    def before_instantiate_classes(self) -> None:
        # `--ckpt_path last`, a pinned version folder that holds a run, stale staging: decided before building.
        if self.subcommand == "fit":
            from lit_factory.checkpointing import prepare_fit_run

            prepare_fit_run(self.config["fit"])

    def instantiate_classes(self) -> None:
        # jsonargparse wraps errors raised in constructors (e.g. a ModelArgs check) into its own report; the user
        # should see our one-line message instead.
        try:
            super().instantiate_classes()
        except Exception as err:
            user_error = _user_error_in_chain(err)
            if user_error is None:
                raise
            raise user_error from None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The stage owns the tokenizer (it may add special tokens) and knows what data it needs: both flow into
        # the data module so a recipe writes the model path once.
        parser.link_arguments(
            "model", "data.init_args.tokenizer", compute_fn=lambda stage: stage.tokenizer, apply_on="instantiate"
        )
        parser.link_arguments(
            "model", "data.init_args.objective", compute_fn=lambda stage: stage.data_objective, apply_on="instantiate"
        )


def _user_error_in_chain(err: BaseException) -> Optional[LitFactoryError]:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, LitFactoryError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def run_trainer_subcommand(args: Optional[list[str]]) -> None:
    """Run fit/validate/test/predict; ``args=None`` reads ``sys.argv``."""
    import logging
    import warnings

    from lightning.pytorch import LightningDataModule

    from lit_factory.stages.base import Stage

    # Lightning's product tips (litlogger, litmodels) are nothing a user of a run can act on.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(lambda record: "💡 Tip" not in record.getMessage())
    # `lit-factory` hands LightningCLI the command line it was given (with shipped recipe paths resolved), which
    # Lightning takes for a mix of Python and command-line arguments.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")

    FactoryCLI(
        Stage,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
