"""Integer (int8) arithmetic for the QDQ -> integer lowering: TFLite's parameters and fixed-point math.

``params`` computes, in numpy at compile time, the multipliers and shifts TFLite derives from float
scales; ``fixed_point`` builds the TIR expressions of TFLite's fixed-point helpers; ``kernels`` composes
them with TOPI into whole integer operators (TE), one PrimFunc each.
"""
