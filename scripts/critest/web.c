/* Stand-in for the nginx images critest runs: a TCP server that answers HTTP on the port given
 * (80 by default), writes the pid file some specs read, and, like nginx, calls itself
 * "nginx: master process" in its command line, which the PID namespace specs look for in
 * /proc/1/cmdline (its comm stays "nginx", which pidof looks for). */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *title = "nginx: master process /bin/nginx";
    if (strcmp(argv[0], title) != 0) {
        /* Same pid, new command line; exec by path so that comm is "nginx", not "exe". */
        char *again[] = {(char *)title, argc > 1 ? argv[1] : "80", NULL};
        execv("/bin/nginx", again);
    }
    int port = argc > 1 ? atoi(argv[1]) : 80;
    FILE *f = fopen("/var/run/nginx.pid", "w");
    if (f) {
        fprintf(f, "%d\n", getpid());
        fclose(f);
    }
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(s, (void *)&a, sizeof a) || listen(s, 64)) {
        perror("bind");
        return 1;
    }
    printf("nginx listening on %d\n", port);
    fflush(stdout);
    for (;;) {
        int c = accept(s, 0, 0);
        if (c < 0)
            continue;
        char buf[2048];
        (void)!read(c, buf, sizeof buf);
        const char *r = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
        (void)!write(c, r, strlen(r));
        close(c);
    }
}
