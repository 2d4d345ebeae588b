/* The pod sandbox's infra process: it sleeps until CRI-O stops the sandbox, and exits at once
 * on SIGTERM so that stopping a pod never waits out the kill timeout. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static void on_signal(int sig) {
    (void)sig;
    exit(0);
}

int main(void) {
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    for (;;)
        pause();
}
