/* Stand-in for e2e-test-images/nonewprivs: installed setuid root, it shows whether the
 * no_new_privs flag kept the effective uid from changing. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    printf("Effective uid: %d\n", geteuid());
    return 0;
}
