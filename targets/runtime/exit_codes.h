/* Exit statuses of the tvm-mcu firmware, as QEMU reports them to the host.
 *
 * This file is the single source of these numbers: tvm_mcu.targets.runner parses the lines
 * `#define TVMMCU_EXIT_<NAME> <code> <comment>` and shows the comment when a run fails, so keep
 * one definition per line in that form. QEMU itself exits with 1 when it cannot start, so the
 * firmware never uses 1.
 */
#ifndef TVMMCU_EXIT_CODES_H
#define TVMMCU_EXIT_CODES_H

#define TVMMCU_EXIT_OK 0               /* the model ran and returned 0 */
#define TVMMCU_EXIT_MODEL_FAILED 3     /* tvmmcu_model_run returned a non-zero status */
#define TVMMCU_EXIT_INPUT_OPEN 4       /* input.bin could not be opened through semihosting */
#define TVMMCU_EXIT_INPUT_SIZE 5       /* input.bin does not hold exactly TVMMCU_INPUT_BYTES bytes */
#define TVMMCU_EXIT_OUTPUT_WRITE 6     /* output.bin could not be written through semihosting */
#define TVMMCU_EXIT_STACK_OVERFLOW 7   /* the model call used the whole stack reserve */
#define TVMMCU_EXIT_NMI 10             /* NMI exception */
#define TVMMCU_EXIT_HARDFAULT 11       /* HardFault exception (or an escalated fault) */
#define TVMMCU_EXIT_MEMMANAGE 12       /* MemManage fault (MPU violation) */
#define TVMMCU_EXIT_BUSFAULT 13        /* BusFault (access to unmapped or faulting memory) */
#define TVMMCU_EXIT_USAGEFAULT 14      /* UsageFault (undefined instruction, no FPU, unaligned) */
#define TVMMCU_EXIT_SECUREFAULT 15     /* SecureFault (Armv8-M security extension) */
#define TVMMCU_EXIT_UNEXPECTED_IRQ 16  /* an exception or interrupt with no handler */

#endif /* TVMMCU_EXIT_CODES_H */
