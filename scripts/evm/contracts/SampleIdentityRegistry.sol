// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title Sample identity registry (eligibility list) for the sample security token.
/// @notice A deliberately small stand-in for an ERC-3643 (T-REX) IdentityRegistry: a wallet is
///         "verified" when it is linked to an identity address. Events, their parameter names and
///         their indexed-ness are copied from the T-REX 4.1.6 IIdentityRegistry / AgentRole ABIs so
///         that an indexer decodes this contract with the same ERC-3643 profile as a real suite.
contract SampleIdentityRegistry {
    // ERC-3643 IIdentityRegistry events (canonical signatures, see shared/reference/evm-events.md).
    event IdentityRegistered(address indexed investorAddress, address indexed identity);
    event IdentityRemoved(address indexed investorAddress, address indexed identity);
    event CountryUpdated(address indexed investorAddress, uint16 indexed country);
    // ERC-3643 AgentRole event.
    event AgentAdded(address indexed _agent);

    address public immutable owner;
    mapping(address => bool) public isAgent;
    mapping(address => address) public identity;
    mapping(address => uint16) public investorCountry;

    modifier onlyAgent() {
        require(isAgent[msg.sender], "SampleIdentityRegistry: caller is not an agent");
        _;
    }

    constructor() {
        owner = msg.sender;
        isAgent[msg.sender] = true;
        emit AgentAdded(msg.sender);
    }

    /// @notice The token must be an agent here so that wallet recovery can re-register the investor.
    function addAgent(address agent) external {
        require(msg.sender == owner, "SampleIdentityRegistry: caller is not the owner");
        require(agent != address(0), "SampleIdentityRegistry: agent is the zero address");
        require(!isAgent[agent], "SampleIdentityRegistry: already an agent");
        isAgent[agent] = true;
        emit AgentAdded(agent);
    }

    function registerIdentity(address wallet, address investorIdentity, uint16 country) external onlyAgent {
        require(wallet != address(0), "SampleIdentityRegistry: wallet is the zero address");
        require(investorIdentity != address(0), "SampleIdentityRegistry: identity is the zero address");
        require(identity[wallet] == address(0), "SampleIdentityRegistry: wallet already registered");
        identity[wallet] = investorIdentity;
        investorCountry[wallet] = country;
        emit IdentityRegistered(wallet, investorIdentity);
    }

    function deleteIdentity(address wallet) external onlyAgent {
        address removed = identity[wallet];
        require(removed != address(0), "SampleIdentityRegistry: wallet not registered");
        delete identity[wallet];
        delete investorCountry[wallet];
        emit IdentityRemoved(wallet, removed);
    }

    function updateCountry(address wallet, uint16 country) external onlyAgent {
        require(identity[wallet] != address(0), "SampleIdentityRegistry: wallet not registered");
        investorCountry[wallet] = country;
        emit CountryUpdated(wallet, country);
    }

    function contains(address wallet) external view returns (bool) {
        return identity[wallet] != address(0);
    }

    /// @notice No claim topics are required here, so a registered wallet is a verified one
    ///         (the same outcome as a T-REX suite deployed with an empty claim-topics list).
    function isVerified(address wallet) public view returns (bool) {
        return identity[wallet] != address(0);
    }
}
