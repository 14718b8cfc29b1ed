"""Amaranth components of the generated accelerator. Nothing here knows a model or a board: components
take an :class:`rtl_gen.config.AccelConfig` and the memory image the compiler lays out."""
