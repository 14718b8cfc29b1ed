"""Two int8 products per iCE40 DSP block: SB_MAC16 instantiated in its two-8x8 mode.

Yosys's ``ice40_dsp`` pass infers SB_MAC16 only as one 16x16 multiplier, so a lane of int8 products would
use a whole block. Instantiated directly with ``MODE_8x8`` the block holds two independent signed 8x8
multipliers: ``A[15:8] * B[15:8]`` on ``O[31:16]`` and ``A[7:0] * B[7:0]`` on ``O[15:0]``.

Used parameters (the rest stay 0; names as in Lattice's iCE40 DSP usage guide and Yosys's ``cells_sim.v``):
``A_REG = B_REG = 1`` (input registers), ``TOP_8x8_MULT_REG = BOT_8x8_MULT_REG = 1`` (product registers),
``TOPOUTPUT_SELECT = BOTOUTPUT_SELECT = 2`` (the 8x8 products, not the adders), ``MODE_8x8 = 1``,
``A_SIGNED = B_SIGNED = 1``. With ``a_reg=False`` the ``A`` operands skip the block's input register
(``A_REG = 0``): they are multiplied in the cycle they arrive, one cycle after the ``B`` operands they go
with. Verilator simulates the instance with Yosys's behavioural model of SB_MAC16
(:func:`rtl_gen.spram.ice40_sim_models`), so the simulated netlist is the synthesised one.
"""

from amaranth import Cat, ClockSignal, Const, Module, Signal, signed
from amaranth.hdl import Instance
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["DualMul8", "SB_MAC16_DUAL_8X8"]

#: SB_MAC16 parameters of the two-8x8 mode with registered inputs and products
SB_MAC16_DUAL_8X8 = dict(
    p_A_REG=Const(1, 1), p_B_REG=Const(1, 1), p_C_REG=Const(0, 1), p_D_REG=Const(0, 1),
    p_TOP_8x8_MULT_REG=Const(1, 1), p_BOT_8x8_MULT_REG=Const(1, 1),
    p_PIPELINE_16x16_MULT_REG1=Const(0, 1), p_PIPELINE_16x16_MULT_REG2=Const(0, 1),
    p_TOPOUTPUT_SELECT=Const(2, 2), p_TOPADDSUB_LOWERINPUT=Const(0, 2), p_TOPADDSUB_UPPERINPUT=Const(0, 1),
    p_TOPADDSUB_CARRYSELECT=Const(0, 2),
    p_BOTOUTPUT_SELECT=Const(2, 2), p_BOTADDSUB_LOWERINPUT=Const(0, 2), p_BOTADDSUB_UPPERINPUT=Const(0, 1),
    p_BOTADDSUB_CARRYSELECT=Const(0, 2),
    p_MODE_8x8=Const(1, 1), p_A_SIGNED=Const(1, 1), p_B_SIGNED=Const(1, 1), p_NEG_TRIGGER=Const(0, 1),
)


class DualMul8(wiring.Component):
    """Two signed 8x8 products in one SB_MAC16, two cycles from operands to products.

    Ports:
        a0, a1: in, signed(8): first operands (with ``a_reg=False``: one cycle after their ``b``).
        b0, b1: in, signed(8): second operands.
        p0, p1: out, signed(16): ``p0 = a0 * b0`` and ``p1 = a1 * b1`` of the ``b`` operands two cycles
                earlier (input register, product register) and of the ``a`` operands two cycles earlier,
                or with ``a_reg=False`` one cycle earlier (product register only).
    """

    a0: In(signed(8))
    a1: In(signed(8))
    b0: In(signed(8))
    b1: In(signed(8))
    p0: Out(signed(16))
    p1: Out(signed(16))

    def __init__(self, a_reg: bool = True):
        self.a_reg = a_reg
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        o = Signal(32)
        zero16 = Const(0, 16)
        m.submodules.mac = Instance(
            "SB_MAC16",
            **{**SB_MAC16_DUAL_8X8, "p_A_REG": Const(int(self.a_reg), 1)},
            i_CLK=ClockSignal("sync"), i_CE=Const(1, 1),
            i_A=Cat(self.a0, self.a1), i_B=Cat(self.b0, self.b1), i_C=zero16, i_D=zero16,
            i_AHOLD=Const(0, 1), i_BHOLD=Const(0, 1), i_CHOLD=Const(0, 1), i_DHOLD=Const(0, 1),
            i_IRSTTOP=Const(0, 1), i_IRSTBOT=Const(0, 1), i_ORSTTOP=Const(0, 1), i_ORSTBOT=Const(0, 1),
            i_OLOADTOP=Const(0, 1), i_OLOADBOT=Const(0, 1), i_ADDSUBTOP=Const(0, 1), i_ADDSUBBOT=Const(0, 1),
            i_OHOLDTOP=Const(0, 1), i_OHOLDBOT=Const(0, 1), i_CI=Const(0, 1), i_ACCUMCI=Const(0, 1),
            i_SIGNEXTIN=Const(0, 1),
            o_O=o,
        )
        m.d.comb += [self.p0.eq(o[:16].as_signed()), self.p1.eq(o[16:].as_signed())]
        return m
