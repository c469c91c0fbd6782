// Ends a section compiled with msl_emu.h's MSL macros (see there): the address-space keywords are
// ordinary identifiers again (std::thread, ...).
#undef kernel
#undef device
#undef constant
#undef threadgroup
#undef thread
