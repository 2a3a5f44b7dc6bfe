/* Firmware main for one model: input.bin -> tvmmcu_model_run -> output.bin, with measurements.
 *
 * The generated model.h defines TVMMCU_INPUT_BYTES and TVMMCU_OUTPUT_BYTES (all inputs and all
 * outputs, packed in order, each at an 8-byte-aligned offset) and declares tvmmcu_model_run. A library
 * compiled with --io-in-arena (model.h defines TVMMCU_IO_IN_ARENA) holds its inputs and outputs in its
 * arena: the harness then has no buffers of its own, reads input.bin into tvmmcu_model_input(k) and
 * writes output.bin from tvmmcu_model_output(k), in the same packed layout. The host
 * (tvm_mcu.targets.runner):
 *   - writes input.bin into QEMU's working directory and reads output.bin back;
 *   - counts the guest instructions from the entry of tvmmcu_roi_begin up to the entry of
 *     tvmmcu_roi_end with its QEMU plugin;
 *   - parses the console line `tvmmcu: rc=<rc> stack=<bytes>`, where <bytes> is the peak stack depth
 *     of the model call below main's stack pointer, measured by painting the free stack;
 *   - maps the exit status through exit_codes.h.
 */
#include <stdint.h>

#include "console.h"
#include "exit_codes.h"
#include "model.h"
#include "semihost.h"

/* Defined by link.ld: the lowest address of the stack reserve. */
extern uint32_t _sstack;

#define TVMMCU_STACK_PAINT 0xDEADBEEFu

#ifndef TVMMCU_IO_IN_ARENA
static uint8_t tvmmcu_input[TVMMCU_INPUT_BYTES] __attribute__((aligned(16)));
static uint8_t tvmmcu_output[TVMMCU_OUTPUT_BYTES] __attribute__((aligned(16)));
#endif

/* The tensor sizes this firmware was built for, for the host to check before a run. No code reads
 * it: link.ld KEEPs its section through --gc-sections. */
__attribute__((used, section(".rodata.tvmmcu_io_bytes"))) const uint32_t tvmmcu_io_bytes[2] = {
    TVMMCU_INPUT_BYTES,
    TVMMCU_OUTPUT_BYTES,
};

/* Region-of-interest markers. noipa and distinct asm text keep them separate, out of line and at
 * their own addresses (identical-code folding would otherwise merge the two bodies). */
__attribute__((noinline, noipa, used)) void tvmmcu_roi_begin(void)
{
    __asm__ volatile("@ tvmmcu roi begin" ::: "memory");
}

__attribute__((noinline, noipa, used)) void tvmmcu_roi_end(void)
{
    __asm__ volatile("@ tvmmcu roi end" ::: "memory");
}

static void tvmmcu_say(const char *what, uint32_t a, const char *mid, uint32_t b)
{
    tvmmcu_line_t line = {.len = 0};
    tvmmcu_line_str(&line, "tvmmcu: ");
    tvmmcu_line_str(&line, what);
    tvmmcu_line_u32(&line, a);
    tvmmcu_line_str(&line, mid);
    tvmmcu_line_u32(&line, b);
    tvmmcu_line_str(&line, "\n");
    tvmmcu_sh_puts(line.text);
}

#ifdef TVMMCU_IO_IN_ARENA
/* The padding between two packed tensors is fewer than 8 bytes, as the packing aligns each to 8. It
 * passes through a buffer on the stack, not a static one: the reads and writes run outside the painted
 * model call, so it adds nothing to the firmware's static RAM or to the measured stack. */
static uint32_t tvmmcu_padded(uint32_t at)
{
    return (at + 7u) & ~7u;
}
#endif

/* Reads the packed inputs from the open file: 0, or the bytes left unread. */
static int32_t tvmmcu_read_inputs(int32_t fd)
{
#ifdef TVMMCU_IO_IN_ARENA
    uint8_t padding[8];
    uint32_t at = 0;
    for (uint32_t k = 0; k < TVMMCU_NUM_INPUTS; ++k) {
        const uint32_t gap = tvmmcu_padded(at) - at;
        const uint32_t n = tvmmcu_model_input_bytes(k);
        if ((gap != 0u && tvmmcu_sh_read(fd, padding, gap) != 0) ||
            tvmmcu_sh_read(fd, tvmmcu_model_input(k), n) != 0) {
            return 1;
        }
        at += gap + n;
    }
    return 0;
#else
    return tvmmcu_sh_read(fd, tvmmcu_input, TVMMCU_INPUT_BYTES);
#endif
}

/* Writes the packed outputs to the open file: 0, or the bytes left unwritten. */
static int32_t tvmmcu_write_outputs(int32_t fd)
{
#ifdef TVMMCU_IO_IN_ARENA
    const uint8_t padding[8] = {0};
    uint32_t at = 0;
    for (uint32_t k = 0; k < TVMMCU_NUM_OUTPUTS; ++k) {
        const uint32_t gap = tvmmcu_padded(at) - at;
        const uint32_t n = tvmmcu_model_output_bytes(k);
        if ((gap != 0u && tvmmcu_sh_write(fd, padding, gap) != 0) ||
            tvmmcu_sh_write(fd, tvmmcu_model_output(k), n) != 0) {
            return 1;
        }
        at += gap + n;
    }
    return 0;
#else
    return tvmmcu_sh_write(fd, tvmmcu_output, TVMMCU_OUTPUT_BYTES);
#endif
}

static uint32_t tvmmcu_read_input(void)
{
    static const char name[] = "input.bin";
    const int32_t fd = tvmmcu_sh_open(name, TVMMCU_SH_MODE_RB, sizeof name - 1u);
    if (fd < 0) {
        tvmmcu_sh_puts("tvmmcu: cannot open input.bin\n");
        return TVMMCU_EXIT_INPUT_OPEN;
    }
    const int32_t len = tvmmcu_sh_flen(fd);
    uint32_t status = TVMMCU_EXIT_OK;
    if (len != (int32_t)TVMMCU_INPUT_BYTES) {
        tvmmcu_say("input.bin holds ", (uint32_t)len, " bytes, the model takes ", TVMMCU_INPUT_BYTES);
        status = TVMMCU_EXIT_INPUT_SIZE;
    } else if (tvmmcu_read_inputs(fd) != 0) {
        tvmmcu_sh_puts("tvmmcu: short read from input.bin\n");
        status = TVMMCU_EXIT_INPUT_SIZE;
    }
    (void)tvmmcu_sh_close(fd);
    return status;
}

static uint32_t tvmmcu_write_output(void)
{
    static const char name[] = "output.bin";
    const int32_t fd = tvmmcu_sh_open(name, TVMMCU_SH_MODE_WB, sizeof name - 1u);
    if (fd < 0) {
        tvmmcu_sh_puts("tvmmcu: cannot create output.bin\n");
        return TVMMCU_EXIT_OUTPUT_WRITE;
    }
    const int32_t left = tvmmcu_write_outputs(fd);
    if (tvmmcu_sh_close(fd) != 0 || left != 0) {
        tvmmcu_sh_puts("tvmmcu: short write to output.bin\n");
        return TVMMCU_EXIT_OUTPUT_WRITE;
    }
    return TVMMCU_EXIT_OK;
}

int main(void)
{
    const uint32_t input_status = tvmmcu_read_input();
    if (input_status != TVMMCU_EXIT_OK) {
        return (int)input_status;
    }

    /* Paint everything below main's SP. The stores are volatile so the compiler cannot turn the loop
     * into a memset call, whose own frame would lie inside the region being painted. Nothing else
     * runs below SP: no interrupt is enabled. */
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (volatile uint32_t *p = &_sstack; p < sp; ++p) {
        *p = TVMMCU_STACK_PAINT;
    }

    tvmmcu_roi_begin();
#ifdef TVMMCU_IO_IN_ARENA
    const int32_t rc = tvmmcu_model_run();
#else
    const int32_t rc = tvmmcu_model_run(tvmmcu_input, tvmmcu_output);
#endif
    tvmmcu_roi_end();

    const volatile uint32_t *low = &_sstack;
    while (low < sp && *low == TVMMCU_STACK_PAINT) {
        ++low;
    }
    const uint32_t stack_bytes = (uint32_t)((uintptr_t)sp - (uintptr_t)low);
    if (low == &_sstack) {
        /* The deepest word of the reserve was written: the stack may have run into .bss. */
        tvmmcu_line_t line = {.len = 0};
        tvmmcu_line_str(&line, "tvmmcu: stack overflow: the model call used all ");
        tvmmcu_line_u32(&line, stack_bytes);
        tvmmcu_line_str(&line, " bytes of stack left below main\n");
        tvmmcu_sh_puts(line.text);
        return TVMMCU_EXIT_STACK_OVERFLOW;
    }

    const uint32_t output_status = tvmmcu_write_output();
    if (output_status != TVMMCU_EXIT_OK) {
        return (int)output_status;
    }

    tvmmcu_line_t line = {.len = 0};
    tvmmcu_line_str(&line, "tvmmcu: rc=");
    tvmmcu_line_i32(&line, rc);
    tvmmcu_line_str(&line, " stack=");
    tvmmcu_line_u32(&line, stack_bytes);
    tvmmcu_line_str(&line, "\n");
    tvmmcu_sh_puts(line.text);
    return rc == 0 ? (int)TVMMCU_EXIT_OK : (int)TVMMCU_EXIT_MODEL_FAILED;
}
