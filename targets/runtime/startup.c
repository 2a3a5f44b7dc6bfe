/* Reset and exception handling for tvm-mcu firmware on Cortex-M (Armv7-M and Armv8-M Mainline).
 *
 * The reset handler sets up C (copies .data from flash, zeroes .bss), enables the FPU when the
 * build uses one, calls main() and ends the emulation through semihosting with main's result as
 * QEMU's exit status. Every fault prints one line and exits with its own status from exit_codes.h,
 * so the host never waits for a timeout on a crash.
 */
#include <stdint.h>

#include "console.h"
#include "exit_codes.h"
#include "semihost.h"

/* Defined by link.ld. */
extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack, __tvmmcu_ram_start;

extern int main(void);

void Reset_Handler(void);
void NMI_Handler(void);
void HardFault_Handler(void);
void MemManage_Handler(void);
void BusFault_Handler(void);
void UsageFault_Handler(void);
void SecureFault_Handler(void);
void Default_Handler(void);
void tvmmcu_fault(const uint32_t *frame, uint32_t code);
void tvmmcu_reset_c(void);

#define TVMMCU_SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
#define TVMMCU_SCB_SHCSR (*(volatile uint32_t *)0xE000ED24u)
#define TVMMCU_SCB_CFSR (*(volatile uint32_t *)0xE000ED28u)
#define TVMMCU_SCB_HFSR (*(volatile uint32_t *)0xE000ED2Cu)

/* SHCSR enables, so that these faults report themselves instead of escalating to HardFault.
 * SECUREFAULTENA (bit 19) exists only on Armv8-M; on Armv7-M the bit is reserved. */
#define TVMMCU_SHCSR_FAULT_ENABLES ((1u << 16) | (1u << 17) | (1u << 18))
#if defined(__ARM_ARCH_8M_MAIN__)
#define TVMMCU_SHCSR_SECURE_ENABLE (1u << 19)
#else
#define TVMMCU_SHCSR_SECURE_ENABLE 0u
#endif

/* 16 system exceptions followed by 32 external interrupts. No interrupt is ever enabled; the IRQ
 * entries exist so that a stray one reports itself rather than jumping through a zero word. */
#define TVMMCU_IRQ_VECTORS 32
__attribute__((section(".isr_vector"), used)) const void *const tvmmcu_vector_table[16 + TVMMCU_IRQ_VECTORS] = {
    [0] = &_estack,
    [1] = Reset_Handler,
    [2] = NMI_Handler,
    [3] = HardFault_Handler,
    [4] = MemManage_Handler,
    [5] = BusFault_Handler,
    [6] = UsageFault_Handler,
    [7] = SecureFault_Handler,
    [11] = Default_Handler, /* SVCall */
    [12] = Default_Handler, /* DebugMonitor */
    [14] = Default_Handler, /* PendSV */
    [15] = Default_Handler, /* SysTick */
    [16 ... 16 + TVMMCU_IRQ_VECTORS - 1] = Default_Handler,
};

/* Loaders differ in whether they set SP from the vector table, so set it before any C runs. */
__attribute__((naked, noreturn)) void Reset_Handler(void)
{
    __asm__ volatile("ldr r0, =_estack\n"
                     "msr msp, r0\n"
                     "b tvmmcu_reset_c\n");
}

/* Fault reporting and the FPU come first, so that even the copy loops (which the compiler may turn
 * into library calls) run with both. */
__attribute__((noreturn, used)) void tvmmcu_reset_c(void)
{
    TVMMCU_SCB_SHCSR |= TVMMCU_SHCSR_FAULT_ENABLES | TVMMCU_SHCSR_SECURE_ENABLE;
#if defined(__ARM_FP)
    /* CP10 and CP11 full access; the barriers make the change visible to the next instruction. */
    TVMMCU_SCB_CPACR |= 0xFu << 20;
#endif
    __asm__ volatile("dsb\n"
                     "isb\n" ::: "memory");
    const uint32_t *src = &_sidata;
    for (uint32_t *dst = &_sdata; dst < &_edata;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = &_sbss; dst < &_ebss;) {
        *dst++ = 0u;
    }
    tvmmcu_sh_exit((uint32_t)main());
}

/* Each handler passes the exception stack frame (from MSP or PSP, by EXC_RETURN bit 2) and its exit
 * code to tvmmcu_fault. Naked, so that nothing is pushed before the frame pointer is taken. */
#define TVMMCU_STR2(x) #x
#define TVMMCU_STR(x) TVMMCU_STR2(x)
#define TVMMCU_FAULT_HANDLER(name, code)                                                            \
    __attribute__((naked)) void name(void)                                                          \
    {                                                                                               \
        __asm__ volatile("tst lr, #4\n"                                                             \
                         "ite eq\n"                                                                 \
                         "mrseq r0, msp\n"                                                          \
                         "mrsne r0, psp\n"                                                          \
                         "movs r1, #" TVMMCU_STR(code) "\n"                                         \
                         "b tvmmcu_fault\n");                                                       \
    }

TVMMCU_FAULT_HANDLER(NMI_Handler, TVMMCU_EXIT_NMI)
TVMMCU_FAULT_HANDLER(HardFault_Handler, TVMMCU_EXIT_HARDFAULT)
TVMMCU_FAULT_HANDLER(MemManage_Handler, TVMMCU_EXIT_MEMMANAGE)
TVMMCU_FAULT_HANDLER(BusFault_Handler, TVMMCU_EXIT_BUSFAULT)
TVMMCU_FAULT_HANDLER(UsageFault_Handler, TVMMCU_EXIT_USAGEFAULT)
TVMMCU_FAULT_HANDLER(SecureFault_Handler, TVMMCU_EXIT_SECUREFAULT)
TVMMCU_FAULT_HANDLER(Default_Handler, TVMMCU_EXIT_UNEXPECTED_IRQ)

static const char *tvmmcu_fault_name(uint32_t code)
{
    switch (code) {
    case TVMMCU_EXIT_NMI:
        return "NMI";
    case TVMMCU_EXIT_HARDFAULT:
        return "HardFault";
    case TVMMCU_EXIT_MEMMANAGE:
        return "MemManage";
    case TVMMCU_EXIT_BUSFAULT:
        return "BusFault";
    case TVMMCU_EXIT_USAGEFAULT:
        return "UsageFault";
    case TVMMCU_EXIT_SECUREFAULT:
        return "SecureFault";
    default:
        return "unexpected exception";
    }
}

/* Prints `tvmmcu: fault <name> pc=... cfsr=... hfsr=...` and exits. The stacked PC is read only
 * when the frame lies inside RAM, so a corrupt SP cannot fault again here. */
__attribute__((noreturn, used)) void tvmmcu_fault(const uint32_t *frame, uint32_t code)
{
    tvmmcu_line_t line = {.len = 0};
    tvmmcu_line_str(&line, "tvmmcu: fault ");
    tvmmcu_line_str(&line, tvmmcu_fault_name(code));
    const uintptr_t f = (uintptr_t)frame;
    if (f >= (uintptr_t)&__tvmmcu_ram_start && f + 32u <= (uintptr_t)&_estack) {
        tvmmcu_line_str(&line, " pc=");
        tvmmcu_line_hex32(&line, frame[6]);
    }
    tvmmcu_line_str(&line, " cfsr=");
    tvmmcu_line_hex32(&line, TVMMCU_SCB_CFSR);
    tvmmcu_line_str(&line, " hfsr=");
    tvmmcu_line_hex32(&line, TVMMCU_SCB_HFSR);
    tvmmcu_line_str(&line, "\n");
    tvmmcu_sh_puts(line.text);
    tvmmcu_sh_exit(code);
}
