"""``klpcore convert``: turn a compiled patch module's references to unexported
kernel symbols into livepatch relocations.

* :mod:`.plan` decides which relocations convert and each symbol's object and
  position, from the target kernel's symbols and the architecture's rules;
* :mod:`.elfedit` writes the livepatch ELF (final or 2015 RFC format).
"""
