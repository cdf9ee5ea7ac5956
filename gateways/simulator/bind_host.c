/* Binds a process's any-address sockets to one host: an LD_PRELOAD shim around bind(2).

   QuickFIX 1.16's acceptor has no setting for its listening address (SocketAcceptPort only)
   and binds INADDR_ANY, so the simulator listened on every interface. Preloaded into the
   simulator with BROKERAGE_BIND_HOST set to a numeric address, this bind() takes a bind to
   the any-address (0.0.0.0, ::) for a bind to that address, same port; every other bind is
   passed to the real one unchanged.

   - BROKERAGE_BIND_HOST an IPv4 address: an AF_INET any-bind binds there, an AF_INET6
     any-bind binds to its IPv4-mapped form (which an IPV6_V6ONLY socket refuses).
   - BROKERAGE_BIND_HOST an IPv6 address: an AF_INET6 any-bind binds there; an AF_INET
     any-bind fails with EADDRNOTAVAIL (it cannot be moved, and must not listen everywhere).
   - BROKERAGE_BIND_HOST unset or empty: nothing is changed. Set but not a numeric address:
     every any-bind fails with EADDRNOTAVAIL.

   brokerage_bind_host() tells the process which address its any-binds go to (NULL: none),
   so that it can refuse to listen when the shim is missing (gateways/simulator/bind_host.py).
   Built by gateways/simulator/bind_host.py with the system C compiler. */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_function)(int, const struct sockaddr *, socklen_t);

enum mode { PASS_THROUGH, TO_IPV4, TO_IPV6, REFUSE };

static enum mode mode = PASS_THROUGH;
static struct in_addr host_ipv4;
static struct in6_addr host_ipv6;
static char host_text[INET6_ADDRSTRLEN];
static bind_function real_bind;

__attribute__((constructor)) static void read_bind_host(void) {
    real_bind = (bind_function)dlsym(RTLD_NEXT, "bind");
    const char *host = getenv("BROKERAGE_BIND_HOST");
    if (host == NULL || host[0] == '\0') {
        mode = PASS_THROUGH;
    } else if (inet_pton(AF_INET, host, &host_ipv4) == 1) {
        mode = TO_IPV4;
        inet_ntop(AF_INET, &host_ipv4, host_text, sizeof host_text);
    } else if (inet_pton(AF_INET6, host, &host_ipv6) == 1) {
        mode = TO_IPV6;
        inet_ntop(AF_INET6, &host_ipv6, host_text, sizeof host_text);
    } else {
        mode = REFUSE;
    }
}

const char *brokerage_bind_host(void) {
    return mode == TO_IPV4 || mode == TO_IPV6 ? host_text : NULL;
}

static int refuse(void) {
    errno = EADDRNOTAVAIL;
    return -1;
}

int bind(int fd, const struct sockaddr *address, socklen_t length) {
    if (real_bind == NULL) {
        errno = ENOSYS;
        return -1;
    }
    if (mode == PASS_THROUGH || address == NULL) {
        return real_bind(fd, address, length);
    }
    if (address->sa_family == AF_INET && length >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in moved;
        memcpy(&moved, address, sizeof moved);
        if (moved.sin_addr.s_addr != htonl(INADDR_ANY)) {
            return real_bind(fd, address, length);
        }
        if (mode != TO_IPV4) {
            return refuse();
        }
        moved.sin_addr = host_ipv4;
        return real_bind(fd, (const struct sockaddr *)&moved, sizeof moved);
    }
    if (address->sa_family == AF_INET6 && length >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 moved;
        memcpy(&moved, address, sizeof moved);
        if (!IN6_IS_ADDR_UNSPECIFIED(&moved.sin6_addr)) {
            return real_bind(fd, address, length);
        }
        if (mode == TO_IPV6) {
            moved.sin6_addr = host_ipv6;
        } else if (mode == TO_IPV4) {
            memset(&moved.sin6_addr, 0, sizeof moved.sin6_addr);
            moved.sin6_addr.s6_addr[10] = 0xff;
            moved.sin6_addr.s6_addr[11] = 0xff;
            memcpy(&moved.sin6_addr.s6_addr[12], &host_ipv4, sizeof host_ipv4);
        } else {
            return refuse();
        }
        return real_bind(fd, (const struct sockaddr *)&moved, sizeof moved);
    }
    return real_bind(fd, address, length);
}
