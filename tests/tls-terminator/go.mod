module wharf.test/tls-terminator

go 1.21
